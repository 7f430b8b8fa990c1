#![no_main]
// The vector cache is a file anyone can damage, and a wrong vector crops the wrong person. Byte 0
// picks a mode: even, the rest is a whole cache file, which must be rejected or accepted without
// a panic; odd, the rest is (offset, byte) edits to a good cache of a real database (plus an
// optional truncation), and loading through it must return exactly what SQLite holds.
use std::cell::RefCell;

use facedb::db::vectors::fuzzing::{load_bytes, same, Fixture};
use facedb::matching::FaceRow;

struct State {
    fixture: Fixture,
    good: Vec<u8>,
    truth: (Vec<FaceRow>, Vec<f32>),
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn state() -> State {
    let mut fixture = Fixture::new().expect("fixture");
    // Two chunks and a partial third, so chunk boundaries and the chunk table are reachable.
    fixture.add_random_faces(2 * 4096 + 9).expect("faces");
    fixture.load().expect("first load builds the cache");
    let good = std::fs::read(fixture.cache_path()).expect("cache written");
    let truth = fixture.truth().expect("truth");
    State { fixture, good, truth }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    STATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let s = cell.get_or_insert_with(state);
        if mode % 2 == 0 {
            let _ = load_bytes(&s.fixture, rest);
            return;
        }
        let mut bytes = s.good.clone();
        let (edits, cut) = if mode & 2 != 0 && rest.len() >= 4 {
            let (cut, edits) = rest.split_at(4);
            (edits, Some(u32::from_le_bytes([cut[0], cut[1], cut[2], cut[3]]) as usize % bytes.len()))
        } else {
            (rest, None)
        };
        for e in edits.chunks_exact(5) {
            let at = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize % bytes.len();
            bytes[at] = e[4];
        }
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        std::fs::write(s.fixture.cache_path(), &bytes).expect("write damaged cache");
        let (faces, vectors, _) = s.fixture.load().expect("a damaged cache is rebuilt, never an error");
        assert!(same(&(faces, vectors), &s.truth), "a damaged cache changed what match sees");
    });
});
