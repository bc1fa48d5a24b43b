# qemu-storage-daemon exporting /dev/$DEV (O_DIRECT, QEMU aio mode $AIO if set) as the VDUSE
# block device $NAME with $QUEUES queues. With PIDFILE set it daemonizes once the export is up
# (its pid in PIDFILE); without, it runs in the foreground (a bed daemon). Run with the same
# arguments again, it reconnects to the VDUSE device it left.
# Variables: DEV, NAME, QUEUES (default 1), AIO (optional: threads, native, io_uring), PIDFILE
# (optional).
: "${DEV:?}" "${NAME:?}" "${QUEUES:=1}" "${AIO:=}" "${PIDFILE:=}"
if [ -n "$PIDFILE" ]; then set -- --daemonize --pidfile "$PIDFILE"; else set --; fi
exec qemu-storage-daemon "$@" \
  --blockdev "driver=host_device,node-name=vol,filename=/dev/$DEV,cache.direct=on${AIO:+,aio=$AIO}" \
  --export "type=vduse-blk,id=exp0,node-name=vol,name=$NAME,writable=on,num-queues=$QUEUES"
