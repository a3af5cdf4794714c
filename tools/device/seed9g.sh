# Device side, call 2 of 3, on the machine warm from fast9g.sh (kernels built; weights cache empty for
# qwen2.5-7b): the seed comparison with its defaults (10 sessions per cell, graphs A/B), timed end to
# end (issue 9, goal 2). SIGINT before the call's limit leaves a resumable store.
source tools/device/env.sh
{ time timeout -s INT 585 python3 -m qbench.cli compare --model qwen2.5-7b --ctx 2048 \
    --backends bf16,bnb-nf4,awq-marlin,gptq-exllamav2,torch-int4 --graphs both --db seed10.sqlite ; } > $OUT/seed10.log 2>&1
echo "rc $?" >> $OUT/seed10.log
cp $OUT/seed10.log /tmp/res/seed10.log
tail -8 $OUT/seed10.log
