module fedfleet.io/benchmarks/checkin_load

go 1.25.0

require google.golang.org/grpc v1.82.1

// The versions e2e/controlplane already builds with, so the module cache that build fills serves this one.
require (
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.40.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af // indirect
)
