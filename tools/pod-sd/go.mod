module xci-cn.local/tools/pod-sd

go 1.26
