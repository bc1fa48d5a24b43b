# Crashes this guest's kernel on purpose (sysrq c panics it; with panic=-1 QEMU then exits),
# so a test proves that a guest killed by a kernel crash is reported as one.
echo c > /proc/sysrq-trigger
# Not reached: the kernel is gone before the write returns.
sleep 60
