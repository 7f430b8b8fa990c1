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
//! Neighbour search is brute force over L2-normalised vectors (cosine distance = 1 - dot),
//! in parallel; measured in README (Performance).

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

    fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    fn distance(&self, a: usize, b: usize) -> f32 {
        1.0 - self.vector(a).iter().zip(self.vector(b)).map(|(x, y)| x * y).sum::<f32>()
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

pub fn plan(faces: &Faces, p: Params) -> Plan {
    let unplaced: Vec<usize> = (0..faces.len()).filter(|&i| faces.person[i].is_none()).collect();
    let placed: Vec<usize> = (0..faces.len()).filter(|&i| faces.person[i].is_some()).collect();
    let votes: Vec<Option<i64>> = unplaced.par_iter().map(|&u| vote(faces, u, &placed, p.distance)).collect();
    let mut assigned = Vec::new();
    let mut rest = Vec::new();
    for (&u, v) in unplaced.iter().zip(votes) {
        match v {
            Some(person) => assigned.push((u, person)),
            None => rest.push(u),
        }
    }
    let new_people = cluster(faces, &rest, p);
    let in_new: usize = new_people.iter().map(Vec::len).sum();
    Plan { assigned, clustered_among: rest.len(), waiting: rest.len() - in_new, new_people }
}

/// The person most of `u`'s placed neighbours within `max` belong to (ties: the nearest one).
fn vote(faces: &Faces, u: usize, placed: &[usize], max: f32) -> Option<i64> {
    let mut tally: std::collections::HashMap<i64, (usize, f32)> = std::collections::HashMap::new();
    for &j in placed {
        let d = faces.distance(u, j);
        if d <= max {
            let person = faces.person[j]?;
            let e = tally.entry(person).or_insert((0, f32::INFINITY));
            e.0 += 1;
            e.1 = e.1.min(d);
        }
    }
    tally.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.1 .1.total_cmp(&a.1 .1)).then(b.0.cmp(&a.0))).map(|(person, _)| person)
}

/// DBSCAN over `ids` (indices into `faces`): groups of at least one core each.
fn cluster(faces: &Faces, ids: &[usize], p: Params) -> Vec<Vec<usize>> {
    let neighbours: Vec<Vec<(usize, f32)>> = (0..ids.len())
        .into_par_iter()
        .map(|a| {
            (0..ids.len())
                .filter(|&b| b != a)
                .filter_map(|b| {
                    let d = faces.distance(ids[a], ids[b]);
                    (d <= p.distance).then_some((b, d))
                })
                .collect()
        })
        .collect();
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
            Some(find(&mut parent, a))
        } else {
            neighbours[a].iter().filter(|(b, _)| core[*b]).min_by(|x, y| x.1.total_cmp(&y.1)).map(|&(b, _)| b)
        };
        if let Some(r) = root {
            let r = find(&mut parent, r);
            groups.entry(r).or_default().push(ids[a]);
        }
    }
    groups.into_values().collect()
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
        plan(&Faces { vectors: &flat, dim: 8, person, can_seed }, Params { distance: 0.5, min_neighbours: 2 })
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
