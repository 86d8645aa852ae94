#!/usr/bin/env bash
# Stop the training processes started by launch.sh (by the pid each worker recorded). The run resumes from
# its last orbax checkpoint with RESUME=1 tpu/launch.sh.
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"
tpu_ssh all "if [ -f ~/esjax-train.pid ]; then kill \$(cat ~/esjax-train.pid) 2>/dev/null || true; rm -f ~/esjax-train.pid; fi"
