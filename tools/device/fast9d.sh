# Device side, call 2 of 3, on the machine warm from fast9c.sh (kernels built, nothing carried): the
# seed comparison with its defaults (10 sessions per cell, graphs A/B), timed end to end (goal 2).
source tools/device/env.sh
{ time timeout 590 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 \
    --backends bf16,bnb-nf4,awq-marlin,gptq-exllamav2,torch-int4 --graphs both --db seed.sqlite ; } > seed.log 2>&1
echo "rc $?" >> seed.log
cp seed.log $OUT/
