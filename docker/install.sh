#!/bin/sh
# Installs torch (the CPU or the CUDA wheel) and then the project into /opt/tunewire, the way
# the project's own setup does: torch first from PyTorch's index, then `pip install .`, whose
# `torch>=2.11` requirement is then already met (a bare `torch` from PyPI would be a CUDA build).
# Used by docker/Dockerfile: tunewire-install cpu|gpu
set -eu
variant="${1:?usage: tunewire-install cpu|gpu}"
: "${TORCH_VERSION:?TORCH_VERSION must be set}"
case "$variant" in
  cpu) index="https://download.pytorch.org/whl/cpu" ;;
  gpu) index="https://download.pytorch.org/whl/${TORCH_CUDA:-cu130}" ;;
  *) echo "unknown variant: $variant (cpu or gpu)" >&2; exit 2 ;;
esac
pip install --index-url "$index" "torch==${TORCH_VERSION}"
pip install /app
# Bytecode now, as root: the root filesystem is read-only at run time.
python -m compileall -q /app /opt/tunewire/lib
# The image must be able to start what the manifests start.
python -c "import torch, grpc, tunewire.v1.trainer_pb2, tunewire.server; print('torch', torch.__version__)"
python -c "import torch.distributed.run"
