//! Grouping faces into people without a reference: density clustering in the spirit of immich.
//! Pure: vectors in, a plan out (`db::people` stores it).
//!
//! 1. **Assign**: a face not in a person joins the person most of its close neighbours (within
//!    `distance`) already belong to (ties: the nearest). Existing people are not re-clustered,
//!    so adding photos costs (new faces) x (faces in people) comparisons.
//! 2. **Cluster** the faces still without a person among themselves: a face with at least
//!    `min_neighbours` others within `distance` that may seed (big, sharp, clearly detected) is a
//!    core; cores within `distance` of each other form one new person; a face near a core joins
//!    the nearest core's person; the rest wait and are tried again next time.
//!
//! Neighbour search is exact brute force over L2-normalised vectors (cosine distance = 1 - dot)
//! as blocked matrix products in parallel; measured in README (Performance).

use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// Calibrated on SFace (README, matching): the same person 0.10-0.42 apart, different people
/// 0.70 and more. 0.5 sits in the gap with room on both sides.
pub const DEFAULT_DISTANCE: f32 = 0.5;
/// A face needs this many close neighbours (besides itself) to seed a person (immich: 3 faces).
pub const DEFAULT_MIN_NEIGHBOURS: usize = 2;

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub distance: f32,
    pub min_neighbours: usize,
}

/// The stored faces: vectors row-major (`dim` each), with their person and whether they may seed.
pub struct Faces<'a> {
    pub vectors: &'a [f32],
    pub dim: usize,
    pub person: &'a [Option<i64>],
    pub can_seed: &'a [bool],
}

impl Faces<'_> {
    fn len(&self) -> usize {
        self.person.len()
    }

    /// The vectors of these faces, one row each (a copy).
    fn rows(&self, ids: &[usize]) -> anyhow::Result<Array2<f32>> {
        let all = ArrayView2::from_shape((self.len(), self.dim), self.vectors)
            .map_err(|_| anyhow::anyhow!("{} vectors of {} values do not fill {} faces", self.vectors.len(), self.dim, self.len()))?;
        Ok(all.select(Axis(0), ids))
    }
}

/// What to store: faces joining existing people, and new people (face indices).
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub assigned: Vec<(usize, i64)>,
    pub new_people: Vec<Vec<usize>>,
    /// Faces compared in the cluster step (those no existing person took).
    pub clustered_among: usize,
    pub waiting: usize,
}

pub fn plan(faces: &Faces, p: Params) -> anyhow::Result<Plan> {
    let unplaced: Vec<usize> = (0..faces.len()).filter(|&i| faces.person[i].is_none()).collect();
    let placed: Vec<usize> = (0..faces.len()).filter(|&i| faces.person[i].is_some()).collect();
    let near_placed = within(faces.rows(&unplaced)?.view(), faces.rows(&placed)?.view(), p.distance, false);
    let mut assigned = Vec::new();
    let mut rest = Vec::new();
    for (&u, near) in unplaced.iter().zip(&near_placed) {
        match vote(near.iter().filter_map(|&(j, d)| Some((faces.person[placed[j]]?, d)))) {
            Some(person) => assigned.push((u, person)),
            None => rest.push(u),
        }
    }
    let new_people = cluster(faces, &rest, p)?;
    let in_new: usize = new_people.iter().map(Vec::len).sum();
    Ok(Plan { assigned, clustered_among: rest.len(), waiting: rest.len() - in_new, new_people })
}

/// The person most of these (person, distance) neighbours belong to (ties: the nearest one).
fn vote(near: impl Iterator<Item = (i64, f32)>) -> Option<i64> {
    let mut tally: std::collections::HashMap<i64, (usize, f32)> = std::collections::HashMap::new();
    for (person, d) in near {
        let e = tally.entry(person).or_insert((0, f32::INFINITY));
        e.0 += 1;
        e.1 = e.1.min(d);
    }
    tally.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.total_cmp(&a.1 .1)).then(b.0.cmp(&a.0))).map(|(person, _)| person)
}

/// Query rows per block and base rows per tile of one matrix product: a 256 x 16384 tile of
/// similarities is 16 MiB, so memory stays flat at any size.
const BLOCK_ROWS: usize = 256;
const TILE_COLS: usize = 16384;

/// For each query row, the base rows within cosine distance `max` (index into base, distance),
/// by blocked matrix products (ndarray's GEMM: SIMD, cache-blocked), blocks in parallel.
/// `same`: query and base are one set: each pair is computed once and recorded both ways, and a
/// row is not its own neighbour.
fn within(query: ArrayView2<f32>, base: ArrayView2<f32>, max: f32, same: bool) -> Vec<Vec<(usize, f32)>> {
    let min_sim = 1.0 - max;
    let blocks = query.nrows().div_ceil(BLOCK_ROWS);
    let pairs: Vec<Vec<(usize, usize, f32)>> = (0..blocks)
        .into_par_iter()
        .map(|blk| {
            let r0 = blk * BLOCK_ROWS;
            let q = query.slice(s![r0..(r0 + BLOCK_ROWS).min(query.nrows()), ..]);
            let mut found = Vec::new();
            let mut c0 = if same { r0 } else { 0 };
            while c0 < base.nrows() {
                let c1 = (c0 + TILE_COLS).min(base.nrows());
                let sims = q.dot(&base.slice(s![c0..c1, ..]).t());
                for ((i, j), &sim) in sims.indexed_iter() {
                    let (a, b) = (r0 + i, c0 + j);
                    // NaN (a damaged vector) fails this comparison: never a neighbour.
                    if sim >= min_sim && (!same || b > a) {
                        found.push((a, b, (1.0 - sim).max(0.0)));
                    }
                }
                c0 = c1;
            }
            found
        })
        .collect();
    let mut out = vec![Vec::new(); query.nrows()];
    for (a, b, d) in pairs.into_iter().flatten() {
        out[a].push((b, d));
        if same {
            out[b].push((a, d));
        }
    }
    out
}

/// DBSCAN over `ids` (indices into `faces`): groups of at least one core each.
fn cluster(faces: &Faces, ids: &[usize], p: Params) -> anyhow::Result<Vec<Vec<usize>>> {
    let rows = faces.rows(ids)?;
    let neighbours = within(rows.view(), rows.view(), p.distance, true);
    let core: Vec<bool> = (0..ids.len()).map(|a| faces.can_seed[ids[a]] && neighbours[a].len() >= p.min_neighbours).collect();
    let mut parent: Vec<usize> = (0..ids.len()).collect();
    for a in (0..ids.len()).filter(|&a| core[a]) {
        for &(b, _) in neighbours[a].iter().filter(|(b, _)| core[*b]) {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for a in 0..ids.len() {
        let root = if core[a] {
            Some(a)
        } else {
            neighbours[a].iter().filter(|(b, _)| core[*b]).min_by(|x, y| x.1.total_cmp(&y.1)).map(|&(b, _)| b)
        };
        if let Some(r) = root {
            let r = find(&mut parent, r);
            groups.entry(r).or_default().push(ids[a]);
        }
    }
    Ok(groups.into_values().collect())
}

fn find(parent: &mut [usize], mut a: usize) -> usize {
    while parent[a] != a {
        parent[a] = parent[parent[a]];
        a = parent[a];
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit vector near axis `axis` (of 8), nudged by `nudge` along the next axis.
    fn near(axis: usize, nudge: f32) -> Vec<f32> {
        let mut v = [0.0f32; 8];
        v[axis] = 1.0;
        v[(axis + 1) % 8] = nudge;
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn run(vs: &[Vec<f32>], person: &[Option<i64>], can_seed: &[bool]) -> Plan {
        let flat: Vec<f32> = vs.concat();
        plan(&Faces { vectors: &flat, dim: 8, person, can_seed }, Params { distance: 0.5, min_neighbours: 2 }).unwrap()
    }

    #[test]
    fn blocked_neighbour_search_finds_exactly_the_pairs_a_plain_loop_finds() {
        // More rows than one block, so pairs across blocks and tiles count too.
        let n = BLOCK_ROWS * 2 + 37;
        let vs: Vec<Vec<f32>> = (0..n).map(|i| near(i % 8, (i % 13) as f32 * 0.05)).collect();
        let m = Array2::from_shape_vec((n, 8), vs.concat()).unwrap();
        let found = within(m.view(), m.view(), 0.3, true);
        for (a, near_a) in found.iter().enumerate() {
            let mut want: Vec<usize> = (0..n).filter(|&b| b != a && 1.0 - m.row(a).dot(&m.row(b)) <= 0.3).collect();
            let mut got: Vec<usize> = near_a.iter().map(|&(b, _)| b).collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "row {a}");
        }
        let cross = within(m.slice(s![..10, ..]), m.view(), 0.3, false);
        assert_eq!(cross[3].len(), found[3].len() + 1, "against another set, a row's own copy counts");
    }

    #[test]
    fn dense_groups_become_people_and_loners_wait() {
        let vs = vec![near(0, 0.0), near(0, 0.2), near(0, 0.4), near(3, 0.0), near(3, 0.3), near(3, 0.1), near(6, 0.0)];
        let p = run(&vs, &[None; 7], &[true; 7]);
        assert_eq!(p.new_people, vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(p.waiting, 1);
        assert!(p.assigned.is_empty());
    }

    #[test]
    fn faces_that_may_not_seed_only_join() {
        // Three close faces, none may seed: nobody is a person yet.
        let vs = vec![near(0, 0.0), near(0, 0.2), near(0, 0.4)];
        assert_eq!(run(&vs, &[None; 3], &[false; 3]).new_people, Vec::<Vec<usize>>::new());
        // One may seed: it gathers the others.
        assert_eq!(run(&vs, &[None; 3], &[true, false, false]).new_people, vec![vec![0, 1, 2]]);
    }

    #[test]
    fn new_faces_join_existing_people_without_reclustering() {
        let vs = vec![near(0, 0.0), near(0, 0.2), near(3, 0.0), near(0, 0.1), near(3, 0.2), near(6, 0.0)];
        let person = [Some(10), Some(10), Some(20), None, None, None];
        let p = run(&vs, &person, &[true; 6]);
        assert_eq!(p.assigned, vec![(3, 10), (4, 20)]);
        assert_eq!(p.clustered_among, 1, "only the face no person took is clustered");
        assert_eq!(p.waiting, 1);
    }
}
