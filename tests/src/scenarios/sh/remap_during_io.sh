# A VMM that maps and unmaps memory while its writes are in flight: every write completes
# and reads back. In: AGENT, DEV.
"$AGENT" blkio-client --path "$DEV" --offset 16777216 --len 1048576 --remap-rounds 40
