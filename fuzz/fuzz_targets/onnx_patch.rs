#![no_main]
// The ONNX rewriter parses model bytes with our own protobuf reader: it must never panic,
// and a successful patch must itself parse again.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok((patched, _)) = facedb::models::patch::patch_yunet(data) {
        facedb::models::patch::fields(&patched).expect("patched model re-parses");
    }
});
