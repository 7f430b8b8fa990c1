//! A match run's distance histogram over every photo it decided about (stored per run,
//! migration 0008): the review page previews a threshold from it and the contact sheet draws it,
//! so both see the far photos that are counted but not stored as rows.

use serde::{Deserialize, Serialize};

/// 0.01 is the threshold's useful precision; 200 bins cover the whole cosine range 0-2.
pub const BIN_WIDTH: f64 = 0.01;
const BINS: usize = 200;
/// Distances a hair above a bin edge by float noise (0.3f32 as f64 is 0.3 + 1.2e-8) still belong
/// under it; in bin widths, so 1e-6 in distance.
const EDGE_SLACK: f64 = 1e-4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHistogram {
    pub bin_width: f64,
    /// Bin i holds distances in (i·w, (i+1)·w]; a distance of 0 is in bin 0.
    pub counts: Vec<u64>,
    /// NaN or infinite distances (a damaged vector): counted, never within any threshold.
    pub non_finite: u64,
    /// Photos at or under the run's threshold, counted exactly from the distances.
    pub within: u64,
}

impl RunHistogram {
    pub fn new(distances: impl IntoIterator<Item = f32>, threshold: f32) -> Self {
        let mut h = RunHistogram { bin_width: BIN_WIDTH, counts: vec![0; BINS], non_finite: 0, within: 0 };
        for d in distances {
            if !d.is_finite() {
                h.non_finite += 1;
                continue;
            }
            h.within += u64::from(d <= threshold);
            let i = bin_of(f64::from(d));
            h.counts[i] += 1;
        }
        h
    }

    /// Every photo of the run.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.non_finite
    }

    /// Photos whose distance is at or under `t`, exact for thresholds on the 0.01 grid from 0.01.
    pub fn count_within(&self, t: f64) -> u64 {
        if !t.is_finite() || t < 0.0 {
            return 0;
        }
        let last = ((t / self.bin_width) + EDGE_SLACK).floor() as usize;
        self.counts.iter().take(last).sum()
    }

    /// The same counts in `n`-times wider bins over `[0, hi]` (the sheet draws 0.05 bins to 1.2);
    /// everything beyond `hi` goes in the last bin, as the old drawing did.
    pub fn rebin(&self, n: usize, hi: f64) -> Vec<u64> {
        let n = n.max(1);
        let bins = ((hi / self.bin_width).round() as usize).div_ceil(n).max(1);
        let mut out = vec![0; bins];
        for (i, &c) in self.counts.iter().enumerate() {
            out[(i / n).min(bins - 1)] += c;
        }
        out
    }
}

fn bin_of(d: f64) -> usize {
    let i = (d / BIN_WIDTH - EDGE_SLACK).ceil() as i64 - 1;
    i.clamp(0, BINS as i64 - 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_photo_is_counted_once_and_thresholds_split_exactly() {
        let d = [0.0f32, 0.25, 0.3, 0.31, 0.6, 0.95, 1.7, f32::NAN, 2.0];
        let h = RunHistogram::new(d, 0.3);
        assert_eq!(h.total(), d.len() as u64, "far photos and damaged vectors are counted too");
        assert_eq!(h.non_finite, 1);
        assert_eq!(h.within, 3, "0, 0.25 and 0.3 are at or under 0.3");
        assert_eq!(h.count_within(0.3), h.within, "a threshold on the grid agrees with the exact count");
        assert_eq!(h.count_within(0.31), 4);
        assert_eq!(h.count_within(2.0), 8, "only the NaN is never within");
        for t in [0.1f32, 0.25, 0.3, 0.45, 0.6, 0.61] {
            let exact = d.iter().filter(|&&x| x <= t).count() as u64;
            assert_eq!(h.count_within(f64::from(t)), exact, "threshold {t}");
        }
    }

    #[test]
    fn rebinning_keeps_the_counts() {
        let h = RunHistogram::new([0.02f32, 0.04, 0.05, 0.06, 1.19, 1.5], 0.4);
        let wide = h.rebin(5, 1.2);
        assert_eq!(wide.len(), 24);
        assert_eq!(wide[0], 3, "0.02, 0.04 and 0.05 are in (0, 0.05]");
        assert_eq!(wide[1], 1);
        assert_eq!(wide[23], 2, "1.19 and, clamped, 1.5");
        assert_eq!(wide.iter().sum::<u64>(), h.total());
    }
}
