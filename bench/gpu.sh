#!/usr/bin/env bash
# The GPU figures of the detect stage, in one call on a CUDA machine (the `device` tool's H100/H200), from the
# repository root. The machine has torch but not dask, hydra or open_clip: they come as wheels in .whl/
# (../shared/tools/device-wheels.sh with the versions of the lock) and the weights in .models/ (copies of the
# default stack's files in ../shared/models: retinaface_mobilenet0.25_Final.pth, yolox_nano_coco_416.onnx and the
# three MediaPipe .tflite files). Full logs go to $OUT (or /tmp).
set -u
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
out=${OUT:-/tmp}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD
models=$PWD/.models
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

stamp() { echo "-- $(date +%T) $*"; }
stamp "1. GPU (nvJPEG; RetinaFace float32, YOLOX float16) against CPU (PIL, float32) on the sample"
python3 bench/gpu_agreement.py --models-dir "$models" || echo "FAILED: agreement"
stamp "2. where the time goes, with and without tiles (full log: $out/profile*.txt)"
for tiles in 1 3; do
  python3 bench/detect_profile.py --models-dir "$models" --n 4096 --batch 128 --set "detect.person_tiles=$tiles" \
    > "$out/profile-tiles$tiles.txt" 2>&1 || echo "FAILED: profile, tiles $tiles"
  grep -E "img/s|^batch|peak|^device" "$out/profile-tiles$tiles.txt"
done
stamp "3. the sample pipeline, detect on the GPU"
python3 -m curate.run pipeline=sample "models.dir=$models" run.progress=false run.dir=/tmp/run \
  || echo "FAILED: sample run"
stamp "4. headline: end to end (bench/detect.py), the default stack, detect.tile_policy=auto, always and off"
for policy in auto always off; do
  python3 bench/detect.py --models-dir "$models" --device cuda --n 36 --batch 128 --e2e 4096 --skip-single \
    --set "detect.tile_policy=$policy" 2>&1 | grep -v Warning || echo "FAILED: headline, tile_policy=$policy"
done
stamp "5. with CLIP ViT-B-32 (random init) and the PASS approach on 100 of the JPEGs, tile_policy=auto"
python3 bench/detect.py --models-dir "$models" --device cuda --clip random --n 36 --batch 128 --e2e 4096 \
  --pass-n 100 --skip-single 2>&1 | grep -v Warning || echo "FAILED: headline with CLIP"
stamp done
