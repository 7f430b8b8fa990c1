fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    for name in ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "32bit.png"] {
        let img = image::open(format!("tests/data/photos/{name}")).unwrap().to_rgb8();
        let m = image::imageops::flip_horizontal(&img);
        let mut both = image::RgbImage::new(img.width() * 2, img.height());
        image::imageops::replace(&mut both, &img, 0, 0);
        image::imageops::replace(&mut both, &m, i64::from(img.width()), 0);
        both.save(dir.join(format!("{name}_mirror.png"))).unwrap();
    }
}
