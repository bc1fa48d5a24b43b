# A daemon: qemu-storage-daemon exporting /dev/$DEV as the VDUSE block device $NAME (run with
# the same arguments again, it reconnects to the device it left).
# Variables: DEV, NAME.
: "${DEV:?}" "${NAME:?}"
exec qemu-storage-daemon \
  --blockdev "driver=host_device,node-name=disk0,filename=/dev/$DEV,cache.direct=on,aio=native" \
  --export "type=vduse-blk,id=exp0,node-name=disk0,name=$NAME,writable=on,num-queues=1"
