//! Which files a shard of the dataset owns: `--shard K/N` (K counts from 0, as Kubernetes'
//! `JOB_COMPLETION_INDEX` and Slurm's `SLURM_ARRAY_TASK_ID` with `--array=0-(N-1)` do).
//!
//! A path belongs to shard `blake3(path key) mod N`, where the path key is the relative path as
//! `files.path` stores it: stable across machines, reruns and retries, and independent of the
//! walk's order or of what else is in the folder, so a retried task does exactly the same work.

use std::fmt;

/// Shard `index` of `count` (`index < count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole dataset as one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `K/N` with `0 <= K < N`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (k, n) = text.trim().split_once('/').ok_or_else(|| format!("`{text}` is not K/N (e.g. 0/8: the first of 8 shards)"))?;
        let index: u32 = k.trim().parse().map_err(|_| format!("`{k}` in `{text}` is not a shard number (K/N, K from 0)"))?;
        let count: u32 = n.trim().parse().map_err(|_| format!("`{n}` in `{text}` is not a shard count (K/N)"))?;
        if count == 0 || index >= count {
            return Err(format!("{text}: K must be 0 to N-1 (shards count from 0, as JOB_COMPLETION_INDEX and SLURM_ARRAY_TASK_ID do)"));
        }
        Ok(Self { index, count })
    }

    /// Whether the file keyed `rel` (as in `files.path`) belongs to this shard.
    pub fn owns(&self, rel: &str) -> bool {
        self.count <= 1 || shard_of(rel, self.count) == self.index
    }
}

/// The shard (of `count`) a path key falls in: the first 8 bytes of its blake3, little-endian,
/// modulo `count`.
pub fn shard_of(rel: &str, count: u32) -> u32 {
    let h = blake3::hash(rel.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(first) % u64::from(count.max(1))) as u32
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_falls_in_exactly_one_shard_and_always_the_same() {
        let paths: Vec<String> = (0..3000).map(|i| format!("dir{}/IMG_{i:05}.jpg", i % 7)).collect();
        for n in [1u32, 2, 3, 8] {
            let shards: Vec<Shard> = (0..n).map(|index| Shard { index, count: n }).collect();
            let mut sizes = vec![0usize; n as usize];
            for p in &paths {
                let owners: Vec<&Shard> = shards.iter().filter(|s| s.owns(p)).collect();
                assert_eq!(owners.len(), 1, "{p} in {n} shards");
                sizes[owners[0].index as usize] += 1;
            }
            // Balanced within 15 % of the mean (3000 paths).
            let mean = paths.len() as f64 / f64::from(n);
            assert!(sizes.iter().all(|&s| (s as f64 - mean).abs() < 0.15 * mean), "{n}: {sizes:?}");
        }
        // Pinned: a change of hash would send retried tasks to other files.
        assert_eq!(shard_of("obama.jpg", 3), shard_of("obama.jpg", 3));
        assert_eq!(
            shard_of("a/b.jpg", 1_000_000),
            (u64::from_le_bytes(blake3::hash(b"a/b.jpg").as_bytes()[..8].try_into().unwrap()) % 1_000_000) as u32
        );
    }

    #[test]
    fn parses_k_of_n_from_zero() {
        assert_eq!(Shard::parse("0/3"), Ok(Shard { index: 0, count: 3 }));
        assert_eq!(Shard::parse("2/3").map(|s| s.to_string()), Ok("2/3".to_string()));
        for bad in ["3/3", "1/0", "-1/3", "a/3", "3", "1/3/4", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
