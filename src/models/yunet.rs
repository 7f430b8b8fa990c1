//! The YuNet detector session: fixed 640x640 BGR input, raw per-stride outputs.

use anyhow::{anyhow, ensure, Result};
use ort::session::Session;
use ort::value::Tensor;

/// Long side of the whole-frame pass and side of a tile, in pixels.
pub const INPUT_SIZE: usize = 640;
/// Input sides must be multiples of this (the coarsest stride).
pub const ALIGN: usize = 32;
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// Raw outputs for one stride: `rows * cols` cells, row-major.
pub struct StrideOutput {
    pub stride: usize,
    pub cols: usize,
    pub cls: Vec<f32>,
    pub obj: Vec<f32>,
    pub bbox: Vec<f32>,
    pub kps: Vec<f32>,
}

pub struct YuNet {
    session: Session,
}

impl YuNet {
    pub fn new(session: Session) -> Result<Self> {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for stride in STRIDES {
            for head in ["cls", "obj", "bbox", "kps"] {
                let name = format!("{head}_{stride}");
                ensure!(names.contains(&name.as_str()), "YuNet model lacks output {name}; is it the right file?");
            }
        }
        Ok(Self { session })
    }

    /// Runs the network on a 1x3xHxW BGR tensor (values 0..255; H and W multiples of 32).
    pub fn run(&mut self, input: Vec<f32>, height: usize, width: usize) -> Result<Vec<StrideOutput>> {
        ensure!(
            height.is_multiple_of(ALIGN) && width.is_multiple_of(ALIGN) && height > 0 && width > 0,
            "YuNet input sides must be multiples of {ALIGN}"
        );
        ensure!(input.len() == 3 * height * width, "YuNet input has the wrong size");
        let tensor = Tensor::from_array((vec![1i64, 3, height as i64, width as i64], input)).map_err(|e| anyhow!("YuNet input: {e}"))?;
        let outputs = self.session.run(ort::inputs!["input" => tensor]).map_err(|e| anyhow!("YuNet inference: {e}"))?;
        let get = |name: String| -> Result<Vec<f32>> {
            let (_, data) = outputs[name.as_str()].try_extract_tensor::<f32>().map_err(|e| anyhow!("YuNet output {name}: {e}"))?;
            Ok(data.to_vec())
        };
        STRIDES
            .iter()
            .map(|&stride| {
                let out = StrideOutput {
                    stride,
                    cols: width / stride,
                    cls: get(format!("cls_{stride}"))?,
                    obj: get(format!("obj_{stride}"))?,
                    bbox: get(format!("bbox_{stride}"))?,
                    kps: get(format!("kps_{stride}"))?,
                };
                let cells = (width / stride) * (height / stride);
                ensure!(
                    out.cls.len() == cells && out.obj.len() == cells && out.bbox.len() == cells * 4 && out.kps.len() == cells * 10,
                    "YuNet output shapes for stride {stride} are not as expected"
                );
                Ok(out)
            })
            .collect()
    }
}
