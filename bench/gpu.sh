#!/usr/bin/env bash
# The GPU figures of the detect stage, in one call on a CUDA machine (the `device` tool's H100/H200), from the
# repository root. The machine has torch but not dask, hydra or open_clip: they come as wheels in .whl/
# (../shared/tools/device-wheels.sh with the versions of the lock) and the weights in .models/ (copies of
# ../shared/models/{retinaface_mobilenet0.25_Final.pth,yolox_nano_coco_416.onnx}).
set -u
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD
models=$PWD/.models
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
nproc

stamp() { echo "-- $(date +%T)"; }
stamp
echo "== 1. GPU (nvJPEG; RetinaFace float32, YOLOX float16) against CPU (PIL, float32) on the sample"
python3 bench/gpu_agreement.py --models-dir "$models" || echo "FAILED: agreement"
stamp
echo "== 2. throughput: face + person + CLIP ViT-B-32 (random init), PASS-sized JPEGs"
python3 bench/detect.py --models-dir "$models" --device cuda --clip random --n 36 --batch 256 --e2e 4096 \
  --pass-n 100 || echo "FAILED: bench batch 256"
stamp
echo "== 3. the sample pipeline with detect on the GPU (LocalCluster, 2 workers)"
python3 -m curate.run pipeline=sample "models.dir=$models" run.progress=false dask.n_workers=2 run.dir=/tmp/run \
  || echo "FAILED: sample run"
stamp
echo "== 4. throughput at batch 128"
python3 bench/detect.py --models-dir "$models" --device cuda --clip random --n 36 --batch 128 --e2e 4096 \
  --skip-single || echo "FAILED: bench batch 128"
stamp
