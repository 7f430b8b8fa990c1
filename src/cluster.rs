//! Grouping faces into people without a reference: density clustering in the spirit of immich.
//! Pure: vectors in, a plan out (`db::people` stores it).
//!
//! The rules, applied to the faces not yet in a person:
//! 1. **Assign**: a face joins the person most of its close neighbours (within `distance`)
//!    already belong to (ties: the nearest, then the lower id).
//! 2. **Cluster** the faces still without a person among themselves: a face with at least
//!    `min_neighbours` others within `distance` that may seed (big, sharp, clearly detected) is a
//!    core; cores within `distance` of each other form one new person; a face near a core joins
//!    the nearest core's person.
//! 3. **Close**: a face without a person next to a face placed by this run joins by the same vote
//!    as in 1, round after round until none joins; the rest wait. So after every run no waiting
//!    face has a close neighbour in a person, and none is a core among the waiting faces.
//!
//! **Incremental.** Each waiting face's neighbour count among the waiting faces is remembered
//! (`Faces::waiting`). By the two invariants of 3, only new faces can join an existing person,
//! and only a waiting face that gains neighbours can become a core, so a run compares the new
//! faces against every face and, among the waiting faces, only those that are promoted or join a
//! person (to find who they pull in and whose count drops). The plan is the one a run with
//! nothing remembered makes (unit test `remembered_counts_give_the_plan_a_full_run_gives`).
//!
//! Neighbour search is exact brute force over L2-normalised vectors (cosine distance = 1 - dot)
//! as blocked matrix products in parallel; measured in README (people).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ndarray::linalg::general_mat_mul;
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

/// The stored faces: vectors row-major (`dim` each), with their person, whether they may seed,
/// and for a face an earlier run left waiting, its close neighbours among the waiting faces then
/// (`None`: a face no run has seen; every face, when the remembered counts cannot be trusted).
#[derive(Clone, Copy)]
pub struct Faces<'a> {
    pub vectors: &'a [f32],
    pub dim: usize,
    pub person: &'a [Option<i64>],
    pub can_seed: &'a [bool],
    pub waiting: &'a [Option<u32>],
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

    fn is_new(&self, i: usize) -> bool {
        self.person[i].is_none() && self.waiting[i].is_none()
    }
}

/// The person a face joins: one stored before, or one this run makes (index into `new_people`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Existing(i64),
    New(usize),
}

/// What to store: faces joining people, new people (face indices), and the waiting faces'
/// neighbour counts that are new or changed.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub assigned: Vec<(usize, Target)>,
    pub new_people: Vec<Vec<usize>>,
    /// (face, close neighbours among the faces still waiting), for faces whose count is new or changed.
    pub waiting_counts: Vec<(usize, u32)>,
    /// Faces no earlier run had seen.
    pub new_faces: usize,
    /// Faces without a person after step 1 (the waiting ones and new ones no person took).
    pub clustered_among: usize,
    /// Waiting faces that became cores because new neighbours arrived.
    pub promoted: usize,
    /// Pairs of vectors compared (the work; a full run compares every pair once).
    pub compared: u64,
    pub waiting: usize,
}

/// One planning run: the faces, what is placed so far, and the neighbour lists known so far.
struct Run<'a, 'b> {
    faces: &'a Faces<'b>,
    p: Params,
    /// Where each face is (its stored person, or where this run puts it).
    place: Vec<Option<Target>>,
    /// Complete neighbour lists (every face within `distance`, itself left out) of the faces
    /// looked at so far: new faces against all, waiting faces against the waiting and new ones.
    lists: HashMap<usize, Vec<(usize, f32)>>,
    /// Waiting faces of earlier runs (the only faces a waiting face's list is computed against:
    /// it has no neighbour in a stored person, and its new neighbours are in `from_new`).
    old_waiting: Vec<usize>,
    /// A waiting face's neighbours among the new faces (their lists read backwards).
    from_new: HashMap<usize, Vec<(usize, f32)>>,
    compared: u64,
}

pub fn plan(faces: &Faces, p: Params) -> anyhow::Result<Plan> {
    // A remembered count that makes a core breaks rule 3's invariant (another --min-neighbours
    // or a re-scored face could): nothing remembered is trusted then, and every face is counted.
    let broken = (0..faces.len())
        .any(|i| faces.person[i].is_none() && faces.waiting[i].is_some_and(|c| faces.can_seed[i] && c as usize >= p.min_neighbours));
    if broken {
        let none = vec![None; faces.len()];
        return plan(&Faces { waiting: &none, ..*faces }, p);
    }
    let mut run = Run::new(faces, p)?;
    let assigned = run.assign_new();
    let (count, promoted) = run.counts()?;
    let new_people = run.cluster(&count)?;
    let closed = run.close()?;
    let clustered_among = count.len();
    let waiting_counts = run.waiting_counts(count);
    let mut all_assigned = assigned;
    all_assigned.extend(closed);
    let waiting = run.place.iter().filter(|t| t.is_none()).count();
    Ok(Plan {
        new_faces: (0..faces.len()).filter(|&i| faces.is_new(i)).count(),
        clustered_among,
        promoted,
        compared: run.compared,
        waiting,
        assigned: all_assigned,
        new_people,
        waiting_counts,
    })
}

impl<'a, 'b> Run<'a, 'b> {
    /// Compares the new faces with every other face, and among themselves (each pair once).
    fn new(faces: &'a Faces<'b>, p: Params) -> anyhow::Result<Self> {
        let n = faces.len();
        let new: Vec<usize> = (0..n).filter(|&i| faces.is_new(i)).collect();
        let others: Vec<usize> = (0..n).filter(|&i| !faces.is_new(i)).collect();
        let old_waiting: Vec<usize> = (0..n).filter(|&i| faces.person[i].is_none() && faces.waiting[i].is_some()).collect();
        let mut lists = HashMap::with_capacity(new.len());
        let mut from_new: HashMap<usize, Vec<(usize, f32)>> = HashMap::new();
        for (k, list) in neighbours_of_new(faces, &new, &others, p.distance)?.into_iter().enumerate() {
            for &(b, d) in list.iter().filter(|(b, _)| faces.waiting[*b].is_some() && faces.person[*b].is_none()) {
                from_new.entry(b).or_default().push((new[k], d));
            }
            lists.insert(new[k], list);
        }
        let pairs = |a: usize, b: usize| (a as u64) * (b as u64);
        let compared = pairs(new.len(), others.len()) + pairs(new.len(), new.len().saturating_sub(1)) / 2;
        let place = faces.person.iter().map(|p| p.map(Target::Existing)).collect();
        Ok(Run { faces, p, place, lists, old_waiting, from_new, compared })
    }

    fn unplaced(&self, i: usize) -> bool {
        self.place[i].is_none()
    }

    /// Rule 1: a new face next to a stored person joins by vote (waiting faces have no such
    /// neighbour: rule 3 of their run).
    fn assign_new(&mut self) -> Vec<(usize, Target)> {
        let mut out = Vec::new();
        for (&a, list) in &self.lists {
            let near = list.iter().filter_map(|&(b, d)| Some((Target::Existing(self.faces.person[b]?), d)));
            if let Some(t) = vote(near) {
                out.push((a, t));
            }
        }
        out.sort_unstable();
        for &(a, t) in &out {
            self.place[a] = Some(t);
        }
        out
    }

    /// Each unplaced face's close neighbours among the unplaced faces: remembered plus the new
    /// neighbours for a waiting face, counted for a new one. Also makes sure every core has its
    /// list (a promoted waiting face's is computed here). Returns the counts and the promoted.
    fn counts(&mut self) -> anyhow::Result<(BTreeMap<usize, u32>, usize)> {
        let mut count: BTreeMap<usize, u32> = BTreeMap::new();
        for &w in &self.old_waiting {
            let gained = self.from_new.get(&w).map_or(0, |l| l.iter().filter(|(b, _)| self.unplaced(*b)).count());
            count.insert(w, self.faces.waiting[w].unwrap_or(0) + gained as u32);
        }
        for (&a, list) in self.lists.iter().filter(|(a, _)| self.place[**a].is_none()) {
            count.insert(a, list.iter().filter(|(b, _)| self.unplaced(*b)).count() as u32);
        }
        let promoted: Vec<usize> = self.old_waiting.iter().copied().filter(|&w| self.is_core(w, &count)).collect();
        self.fill(&promoted)?;
        Ok((count, promoted.len()))
    }

    fn is_core(&self, i: usize, count: &BTreeMap<usize, u32>) -> bool {
        self.faces.can_seed[i] && count.get(&i).is_some_and(|&c| c as usize >= self.p.min_neighbours)
    }

    /// Computes the lists of these waiting faces (against the waiting faces; their new
    /// neighbours are known already).
    fn fill(&mut self, ids: &[usize]) -> anyhow::Result<()> {
        let ids: Vec<usize> = ids.iter().copied().filter(|i| !self.lists.contains_key(i)).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let found = within(self.faces.rows(&ids)?.view(), self.faces.rows(&self.old_waiting)?.view(), self.p.distance, false);
        self.compared += (ids.len() as u64) * (self.old_waiting.len() as u64);
        for (&a, near) in ids.iter().zip(found) {
            let mut list: Vec<(usize, f32)> = near.into_iter().map(|(j, d)| (self.old_waiting[j], d)).filter(|&(b, _)| b != a).collect();
            list.extend(self.from_new.get(&a).into_iter().flatten().copied());
            self.lists.insert(a, list);
        }
        Ok(())
    }

    /// Rule 2, DBSCAN among the unplaced faces: cores joined by their edges, each other face
    /// next to a core joins the nearest core's group. Every core has its list.
    fn cluster(&mut self, count: &BTreeMap<usize, u32>) -> anyhow::Result<Vec<Vec<usize>>> {
        let cores: Vec<usize> = count.keys().copied().filter(|&i| self.is_core(i, count)).collect();
        let is_core = |i: usize| cores.binary_search(&i).is_ok();
        let mut parent: HashMap<usize, usize> = cores.iter().map(|&c| (c, c)).collect();
        let mut nearest: BTreeMap<usize, (f32, usize)> = BTreeMap::new();
        for &c in &cores {
            let list = self.lists.get(&c).ok_or_else(|| anyhow::anyhow!("core {c} has no neighbour list"))?;
            for &(b, d) in list.iter().filter(|(b, _)| self.unplaced(*b)) {
                if is_core(b) {
                    let (ra, rb) = (find(&mut parent, c), find(&mut parent, b));
                    parent.insert(ra.max(rb), ra.min(rb));
                } else {
                    let e = nearest.entry(b).or_insert((d, c));
                    if d.total_cmp(&e.0).then(c.cmp(&e.1)).is_lt() {
                        *e = (d, c);
                    }
                }
            }
        }
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &c in &cores {
            groups.entry(find(&mut parent, c)).or_default().push(c);
        }
        for (&b, &(_, c)) in &nearest {
            groups.entry(find(&mut parent, c)).or_default().push(b);
        }
        let people: Vec<Vec<usize>> = groups
            .into_values()
            .map(|mut g| {
                g.sort_unstable();
                g
            })
            .collect();
        for (k, g) in people.iter().enumerate() {
            for &i in g {
                self.place[i] = Some(Target::New(k));
            }
        }
        Ok(people)
    }

    /// Rule 3: round after round, each unplaced face next to a face placed in the last round
    /// joins by the vote of every face placed near it so far.
    fn close(&mut self) -> anyhow::Result<Vec<(usize, Target)>> {
        let mut frontier: Vec<usize> =
            (0..self.faces.len()).filter(|&i| self.faces.person[i].is_none() && self.place[i].is_some()).collect();
        let mut placed_near: HashMap<usize, Vec<(Target, f32)>> = HashMap::new();
        let mut joined = Vec::new();
        while !frontier.is_empty() {
            self.fill(&frontier)?;
            let mut candidates = BTreeSet::new();
            for f in &frontier {
                let (Some(t), Some(list)) = (self.place[*f], self.lists.get(f)) else { continue };
                for &(x, d) in list.iter().filter(|(x, _)| self.place[*x].is_none()) {
                    placed_near.entry(x).or_default().push((t, d));
                    candidates.insert(x);
                }
            }
            let round: Vec<(usize, Target)> =
                candidates.iter().filter_map(|&x| vote(placed_near.get(&x)?.iter().copied()).map(|t| (x, t))).collect();
            for &(x, t) in &round {
                self.place[x] = Some(t);
            }
            frontier = round.iter().map(|&(x, _)| x).collect();
            joined.extend(round);
        }
        Ok(joined)
    }

    /// The counts of the faces still waiting, among the faces still waiting: the unplaced counts
    /// less the neighbours this run placed (every such face has its list).
    fn waiting_counts(&self, mut count: BTreeMap<usize, u32>) -> Vec<(usize, u32)> {
        let left: Vec<usize> = count.keys().copied().filter(|&i| self.place[i].is_some()).collect();
        for i in left {
            for &(x, _) in self.lists.get(&i).into_iter().flatten() {
                if self.place[x].is_none() {
                    if let Some(c) = count.get_mut(&x) {
                        *c = c.saturating_sub(1);
                    }
                }
            }
        }
        count.into_iter().filter(|&(i, c)| self.place[i].is_none() && self.faces.waiting[i] != Some(c)).collect()
    }
}

/// The complete neighbour lists (indices into `faces`) of the new faces.
fn neighbours_of_new(faces: &Faces, new: &[usize], others: &[usize], max: f32) -> anyhow::Result<Vec<Vec<(usize, f32)>>> {
    let new_rows = faces.rows(new)?;
    if new.len() * 8 < faces.len() {
        // A few new faces: against the whole matrix where it lies (no copy of the other faces;
        // the pairs of new faces, computed twice, are few against the whole).
        let all = ArrayView2::from_shape((faces.len(), faces.dim), faces.vectors)?;
        let near = within(new_rows.view(), all, max, false);
        return Ok(near.into_iter().zip(new).map(|(l, &a)| l.into_iter().filter(|&(b, _)| b != a).collect()).collect());
    }
    let cross = within(new_rows.view(), faces.rows(others)?.view(), max, false);
    let among = within(new_rows.view(), new_rows.view(), max, true);
    let lists = cross.into_iter().zip(among);
    Ok(lists.map(|(c, a)| c.into_iter().map(|(j, d)| (others[j], d)).chain(a.into_iter().map(|(j, d)| (new[j], d))).collect()).collect())
}

/// The target most of these (target, distance) neighbours belong to (ties: the nearest one,
/// then the lower target).
fn vote(near: impl Iterator<Item = (Target, f32)>) -> Option<Target> {
    let mut tally: HashMap<Target, (usize, f32)> = HashMap::new();
    for (t, d) in near {
        let e = tally.entry(t).or_insert((0, f32::INFINITY));
        e.0 += 1;
        e.1 = e.1.min(d);
    }
    tally.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.total_cmp(&a.1 .1)).then(b.0.cmp(&a.0))).map(|(t, _)| t)
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
        // One tile buffer reused by each worker's blocks: a fresh 16 MiB product per tile is
        // mapped and faulted in page by page (measured: a third of a 100 000-face run in the kernel).
        .map_init(
            || Array2::<f32>::zeros((BLOCK_ROWS, TILE_COLS.min(base.nrows()))),
            |buf, blk| {
                let r0 = blk * BLOCK_ROWS;
                let q = query.slice(s![r0..(r0 + BLOCK_ROWS).min(query.nrows()), ..]);
                let mut found = Vec::new();
                let mut c0 = if same { r0 } else { 0 };
                while c0 < base.nrows() {
                    let c1 = (c0 + TILE_COLS).min(base.nrows());
                    let mut sims = buf.slice_mut(s![..q.nrows(), ..c1 - c0]);
                    general_mat_mul(1.0, &q, &base.slice(s![c0..c1, ..]).t(), 0.0, &mut sims);
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
            },
        )
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

/// The root of `a`'s set (union-find with path halving over the cores).
fn find(parent: &mut HashMap<usize, usize>, mut a: usize) -> usize {
    loop {
        let p = parent.get(&a).copied().unwrap_or(a);
        if p == a {
            return a;
        }
        let gp = parent.get(&p).copied().unwrap_or(p);
        parent.insert(a, gp);
        a = gp;
    }
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
        let waiting = vec![None; person.len()];
        plan(&Faces { vectors: &flat, dim: 8, person, can_seed, waiting: &waiting }, Params { distance: 0.5, min_neighbours: 2 }).unwrap()
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
        assert_eq!(p.waiting_counts, vec![(6, 0)], "the loner's count is remembered");
        assert!(p.assigned.is_empty());
        assert_eq!(p.compared, 7 * 6 / 2, "a first run compares every pair once");
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
        assert_eq!(p.assigned, vec![(3, Target::Existing(10)), (4, Target::Existing(20))]);
        assert_eq!(p.clustered_among, 1, "only the face no person took is clustered");
        assert_eq!(p.waiting, 1);
    }

    /// A small deterministic generator (xorshift), so the test needs no crate and never flakes.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
        fn gauss(&mut self) -> f32 {
            let (u, v) = (self.next().max(1e-7), self.next());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }
    }

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    /// People of every spread (tight, loose: borders, chains, waiting faces) plus strangers.
    fn library(rng: &mut Rng, dim: usize) -> (Vec<Vec<f32>>, Vec<bool>) {
        let centres: Vec<Vec<f32>> = (0..8).map(|_| unit((0..dim).map(|_| rng.gauss()).collect())).collect();
        let mut faces = Vec::new();
        for k in 0..360 {
            let v = if k % 6 == 5 {
                unit((0..dim).map(|_| rng.gauss()).collect())
            } else {
                let c = &centres[k % 8];
                // Per axis, so that the spread of the vector is the same at any dimension.
                let spread = (0.12 + 0.05 * (k % 8) as f32) * 4.0 / (dim as f32).sqrt();
                unit(c.iter().map(|x| x + spread * rng.gauss()).collect())
            };
            faces.push(v);
        }
        let can_seed = (0..faces.len()).map(|_| rng.next() < 0.8).collect();
        (faces, can_seed)
    }

    #[test]
    fn remembered_counts_give_the_plan_a_full_run_gives() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Random directions in 64 dimensions are nearly never within 0.5 of each other: strangers.
        let dim = 64;
        let (all, all_seed) = library(&mut rng, dim);
        let p = Params { distance: 0.5, min_neighbours: 2 };
        let (mut person, mut waiting): (Vec<Option<i64>>, Vec<Option<u32>>) = (Vec::new(), Vec::new());
        let mut next_id = 100;
        let (mut promoted, mut joined_later, mut compared) = (0, 0, (0u64, 0u64));
        for batch in all.chunks(24).zip(all_seed.chunks(24)) {
            person.extend(std::iter::repeat_n(None, batch.0.len()));
            waiting.extend(std::iter::repeat_n(None, batch.0.len()));
            let n = person.len();
            let flat: Vec<f32> = all[..n].concat();
            let can_seed = &all_seed[..n];
            let faces = Faces { vectors: &flat, dim, person: &person, can_seed, waiting: &waiting };
            let inc = plan(&faces, p).unwrap();
            let none = vec![None; n];
            let full = plan(&Faces { waiting: &none, ..faces }, p).unwrap();
            assert_eq!((&inc.assigned, &inc.new_people, inc.waiting), (&full.assigned, &full.new_people, full.waiting), "at {n} faces");
            let mut counts: BTreeMap<usize, u32> = (0..n).filter_map(|i| Some((i, waiting[i]?))).collect();
            counts.extend(inc.waiting_counts.iter().copied());
            counts.retain(|&i, _| full.waiting_counts.iter().any(|&(j, _)| j == i));
            assert_eq!(counts.into_iter().collect::<Vec<_>>(), full.waiting_counts, "remembered counts at {n} faces");
            assert!(inc.compared <= full.compared, "{} pairs compared against {} at {n} faces", inc.compared, full.compared);
            let (w, b) = (waiting.iter().zip(&person).filter(|(w, p)| w.is_some() && p.is_none()).count(), batch.0.len());
            let fills = inc.compared - (b * (n - b) + b * (b - 1) / 2) as u64;
            assert_eq!(fills % w.max(1) as u64, 0, "only waiting faces are compared again, each against the waiting ones");
            compared.0 += inc.compared;
            compared.1 += full.compared;
            promoted += inc.promoted;
            joined_later += inc.assigned.iter().filter(|(i, _)| *i < n - batch.0.len()).count();
            // Store the plan as `db::people::store` does.
            let ids: Vec<i64> = inc.new_people.iter().map(|_| (next_id, next_id += 1).0).collect();
            for (k, g) in inc.new_people.iter().enumerate() {
                g.iter().for_each(|&i| person[i] = Some(ids[k]));
            }
            for &(i, t) in &inc.assigned {
                person[i] = Some(match t {
                    Target::Existing(id) => id,
                    Target::New(k) => ids[k],
                });
            }
            for (i, c) in inc.waiting_counts {
                waiting[i] = Some(c);
            }
            for i in 0..n {
                if person[i].is_some() {
                    waiting[i] = None;
                }
            }
        }
        assert!(promoted > 0 && joined_later > 0, "the library exercises promotion ({promoted}) and late joins ({joined_later})");
        assert!(compared.0 < compared.1, "{} pairs compared in all against {} re-clustering the waiting faces", compared.0, compared.1);
        // Strangers pile up waiting; a few new faces are compared with them once, not all pairs.
        let strangers: Vec<Vec<f32>> = (0..400).map(|_| unit((0..dim).map(|_| rng.gauss()).collect())).collect();
        let all: Vec<Vec<f32>> = all.into_iter().chain(strangers).collect();
        let all_seed: Vec<bool> = all_seed.into_iter().chain(std::iter::repeat(true)).take(all.len()).collect();
        for (from, to) in [(person.len(), all.len() - 5), (all.len() - 5, all.len())] {
            person.resize(to, None);
            waiting.resize(to, None);
            let flat = all[..to].concat();
            let faces = Faces { vectors: &flat, dim, person: &person, can_seed: &all_seed[..to], waiting: &waiting };
            let inc = plan(&faces, p).unwrap();
            let none = vec![None; to];
            let full = plan(&Faces { waiting: &none, ..faces }, p).unwrap();
            assert_eq!((&inc.assigned, &inc.new_people, inc.waiting), (&full.assigned, &full.new_people, full.waiting));
            let b = (to - from) as u64;
            if b == 5 {
                assert_eq!(inc.compared, 5 * (to as u64 - 5) + 10, "five new faces against every other face, and each other");
                assert!(full.compared > 40 * inc.compared, "{} against {}", full.compared, inc.compared);
            }
            for (i, c) in inc.waiting_counts {
                waiting[i] = Some(c);
            }
        }
        let flat = all.concat();
        let again = plan(&Faces { vectors: &flat, dim, person: &person, can_seed: &all_seed, waiting: &waiting }, p).unwrap();
        assert_eq!((again.compared, again.assigned.len(), again.new_people.len()), (0, 0, 0), "nothing new, nothing to do");
    }
}
