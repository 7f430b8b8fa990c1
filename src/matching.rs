//! Comparing stored face embeddings with reference embeddings (pure; no I/O).

/// Default cosine-distance threshold for SFace. Same-person distances on the test portraits are
/// 0.10-0.26 and different-person ~0.88-0.92; OpenCV's suggested operating point for SFace is
/// 0.637 and deepface uses 0.593. 0.60 sits just inside both (see README "Choosing a threshold").
pub const DEFAULT_THRESHOLD: f32 = 0.60;

/// Cosine distance between L2-normalised vectors.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

/// Distance of a face to the reference set: to the nearest reference.
pub fn distance_to_refs(face: &[f32], refs: &[Vec<f32>]) -> f32 {
    refs.iter()
        .map(|r| cosine_distance(face, r))
        .min_by(f32::total_cmp)
        .unwrap_or(f32::INFINITY)
}

/// The closest face of one photo and the runner-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub image_id: i64,
    pub face_id: i64,
    pub distance: f32,
    pub runner_up: Option<(i64, f32)>,
}

/// One candidate per photo. `faces[i]` = (image_id, face_id) owns `vectors[i*dim..(i+1)*dim]`;
/// rows of one photo must be adjacent (the database returns them ordered by image).
pub fn best_per_image(
    faces: &[(i64, i64)],
    vectors: &[f32],
    dim: usize,
    refs: &[Vec<f32>],
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for (i, &(image_id, face_id)) in faces.iter().enumerate() {
        let Some(v) = vectors.get(i * dim..(i + 1) * dim) else {
            break;
        };
        let d = distance_to_refs(v, refs);
        match out.last_mut() {
            Some(c) if c.image_id == image_id => {
                if d < c.distance {
                    c.runner_up = Some((c.face_id, c.distance));
                    c.face_id = face_id;
                    c.distance = d;
                } else if c.runner_up.is_none_or(|(_, r)| d < r) {
                    c.runner_up = Some((face_id, d));
                }
            }
            _ => out.push(Candidate {
                image_id,
                face_id,
                distance: d,
                runner_up: None,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_closest_face_per_photo_with_runner_up() {
        let refs = vec![vec![1.0, 0.0]];
        let faces = [(1, 10), (1, 11), (1, 12), (2, 20)];
        let vectors = [0.0, 1.0, 1.0, 0.0, 0.6, 0.8, -1.0, 0.0];
        let c = best_per_image(&faces, &vectors, 2, &refs);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].face_id, c[0].distance), (11, 0.0));
        let (ru, rd) = c[0].runner_up.unwrap();
        assert_eq!(ru, 12);
        assert!((rd - 0.4).abs() < 1e-6);
        assert_eq!(
            (c[1].face_id, c[1].distance, c[1].runner_up),
            (20, 2.0, None)
        );
    }

    #[test]
    fn nearest_reference_wins() {
        let refs = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        assert_eq!(distance_to_refs(&[0.0, 1.0], &refs), 0.0);
        assert_eq!(distance_to_refs(&[0.0, 1.0], &[]), f32::INFINITY);
    }
}
