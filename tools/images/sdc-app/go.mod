module xci-cn.local/tools/images/sdc-app

go 1.26
