# Device side, call 1 of 3 on a fresh machine (carry .whl and .devsite): fast9c.sh on the final code,
# its files named no-option3.* (issue 9, goal 3: the no-option run, after both kernel builds).
NAME=no-option3 bash tools/device/fast9c.sh
