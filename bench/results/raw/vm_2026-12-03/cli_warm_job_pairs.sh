#!/bin/bash
# Alternating warm jobs, base (main before this work) vs ours: served (each against its own
# running `serve all`, caches filled first) and embedded (each on its own warm --data_dir).
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=/work/wt/n21/.venv/bin/python
ROUNDS=${ROUNDS:-5}
declare -A DIR=([base]=/tmp/n21/base [ours]=/work/wt/n21)
declare -A PORT=([base]=47320 [ours]=47310)
declare -A DATA=([base]=/tmp/n21/served_base [ours]=/tmp/n21/served/data)
declare -A EMB=([base]=/tmp/n21/emb_base [ours]=/tmp/n21/emb)
train() {  # side, extra args...
  local side=$1; shift
  (cd ${DIR[$side]} && PYTHONPATH=${DIR[$side]} /usr/bin/time -f "%e %U" $PY clients/cli.py train -c examples/sms_spam.yaml --dataset .data/examples/sms_spam.csv --json -q "$@" 2>&1 >/tmp/n21/last_$side.json | tail -1)
  grep -q '"state": "SUCCEEDED"' /tmp/n21/last_$side.json || echo "NOT SUCCEEDED $side"
}
if [ ! -e /tmp/n21/served/pid ] || ! ps -p $(cat /tmp/n21/served/pid) >/dev/null; then
  (cd /work/wt/n21 && PYTHONPATH=/work/wt/n21 setsid nohup $PY clients/cli.py serve all --port 47310 --data_dir ${DATA[ours]} > /tmp/n21/served/serve.log 2>&1 & echo $! > /tmp/n21/served/pid)
fi
mkdir -p /tmp/n21/served_base
(cd /tmp/n21/base && PYTHONPATH=/tmp/n21/base setsid nohup $PY clients/cli.py serve all --port 47320 --data_dir ${DATA[base]} > /tmp/n21/served_base/serve.log 2>&1 & echo $! > /tmp/n21/served_base/pid)
for p in 47311 47321; do for i in $(seq 90); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 2; done; done
echo "setup: $(date -u +%H:%M:%S)"
for side in base ours; do train $side --trainer 127.0.0.1:$((PORT[$side]+1)) >/dev/null; train $side --trainer 127.0.0.1:$((PORT[$side]+1)) >/dev/null; done
[ -d /tmp/n21/emb_base ] || train base --data_dir /tmp/n21/emb_base >/dev/null
for side in base ours; do train $side --data_dir ${EMB[$side]} >/dev/null; done
echo "rounds: $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq $ROUNDS); do
  if [ $((r % 2)) = 1 ]; then order="base ours"; else order="ours base"; fi
  for side in $order; do echo "round $r served $side $(train $side --trainer 127.0.0.1:$((PORT[$side]+1)))"; done
  for side in $order; do echo "round $r embedded $side $(train $side --data_dir ${EMB[$side]})"; done
  echo "round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
done
kill -TERM -- -$(cat /tmp/n21/served_base/pid)
echo "end $(date -u +%H:%M:%S)"
