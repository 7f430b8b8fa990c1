#![no_main]
// Our JPEG marker walk runs on every JPEG before decoding: it must never panic or loop.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = facedb::pipeline::decode::jpeg_is_complete(data);
});
