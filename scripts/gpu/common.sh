# Shared by the scripts of this folder that run on the GPU machine (sourced from the
# repository root).

# .gpu/specd from .gpu/specd.xz (the binary travels compressed: a call carries at most 64 MiB),
# unless it is already unpacked.
unpack_specd() {
  if [[ ! -x .gpu/specd && -f .gpu/specd.xz ]]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      .gpu/specd.xz .gpu/specd
    chmod +x .gpu/specd
  fi
}

# Nsight Compute's command line, or nothing when the machine has none.
find_ncu() {
  command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1
}
