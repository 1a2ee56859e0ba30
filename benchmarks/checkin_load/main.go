// checkin_load: concurrent fedfleet.v1.Fleet/CheckIn calls against a gateway, for bench_gateway_fleet.py.
//
// The Python benchmark hands it, on stdin, one device per line (its bearer token and its serialized
// FleetCheckInRequest, base64) and then drives it with commands: each device gets its own TLS connection
// (one grpc ClientConn each), "ready" is printed once every connection has completed a call, and the line
// "run SECONDS" starts the window: -concurrency goroutines call CheckIn back to back, each cycling through
// the devices, until the window closes. The answer is one JSON line: calls completed inside the window,
// errors by status code, latency percentiles and this process's CPU time over the window.
//
// It exists so that the client side of the benchmark is cheap: a Python gRPC client spends about as much
// CPU per call as the gateway does, and on a small machine that CPU is taken from the gateway.
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const method = "/fedfleet.v1.Fleet/CheckIn"

// rawCodec sends and receives message bytes as they are: the requests are serialized by the Python side,
// so this program needs no generated code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	p := v.(*[]byte)
	*p = append((*p)[:0], data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type device struct {
	conn    *grpc.ClientConn
	ctx     context.Context // carries the device's token
	request []byte
}

type result struct {
	OK         int            `json:"ok"`
	Errors     map[string]int `json:"errors"`
	P50Ms      float64        `json:"p50_ms"`
	P99Ms      float64        `json:"p99_ms"`
	CPUSeconds float64        `json:"cpu_seconds"`
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "checkin_load: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	target := flag.String("target", "", "host:port of the gateway")
	caPath := flag.String("ca", "", "PEM file of the CA that signed the gateway's certificate")
	concurrency := flag.Int("concurrency", 64, "calls in flight")
	callSeconds := flag.Float64("call-seconds", 30, "deadline of each call")
	flag.Parse()
	if *target == "" || *caPath == "" || *concurrency < 1 {
		fail("-target, -ca and -concurrency >= 1 are required")
	}
	caPEM, err := os.ReadFile(*caPath)
	if err != nil {
		fail("%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("%s holds no PEM certificate", *caPath)
	}
	creds := credentials.NewClientTLSFromCert(pool, "")

	input := bufio.NewScanner(os.Stdin)
	input.Buffer(make([]byte, 1<<20), 1<<20)
	var devices []device
	for input.Scan() {
		line := strings.TrimSpace(input.Text())
		if line == "" {
			break // the end of the device list
		}
		token, encoded, found := strings.Cut(line, "\t")
		if !found {
			fail("a device line must be TOKEN<TAB>BASE64")
		}
		request, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			fail("a device's request is not base64: %v", err)
		}
		conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(creds),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fail("%v", err)
		}
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
		devices = append(devices, device{conn, ctx, request})
	}
	if len(devices) == 0 {
		fail("no devices on stdin")
	}
	deadline := time.Duration(*callSeconds * float64(time.Second))

	// Every connection up (TLS handshake done) before the window: one call each, a few at a time.
	var wg sync.WaitGroup
	warm := make(chan struct{}, 64)
	var warmErr error
	var mu sync.Mutex
	for i := range devices {
		wg.Add(1)
		warm <- struct{}{}
		go func(d device) {
			defer wg.Done()
			defer func() { <-warm }()
			ctx, cancel := context.WithTimeout(d.ctx, deadline)
			defer cancel()
			var reply []byte
			if err := d.conn.Invoke(ctx, method, &d.request, &reply, grpc.WaitForReady(true)); err != nil {
				mu.Lock()
				warmErr = err
				mu.Unlock()
			}
		}(devices[i])
	}
	wg.Wait()
	if warmErr != nil {
		fail("a device's first check-in failed: %v", warmErr)
	}
	fmt.Println("ready")

	for input.Scan() {
		words := strings.Fields(input.Text())
		if len(words) == 0 {
			continue
		}
		if words[0] == "stop" {
			break
		}
		if words[0] != "run" || len(words) != 2 {
			fail("unknown command %q", input.Text())
		}
		seconds, err := strconv.ParseFloat(words[1], 64)
		if err != nil || seconds <= 0 {
			fail("run takes a positive number of seconds")
		}
		out, _ := json.Marshal(window(devices, *concurrency, time.Duration(seconds*float64(time.Second)), deadline))
		fmt.Println(string(out))
	}
	for _, d := range devices {
		d.conn.Close()
	}
}

func window(devices []device, concurrency int, length, deadline time.Duration) result {
	cpuBefore := cpuSeconds()
	start := time.Now()
	end := start.Add(length)
	var mu sync.Mutex
	ok, errors := 0, map[string]int{}
	var latencies []time.Duration
	var wg sync.WaitGroup
	for k := 0; k < concurrency; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			var mine []time.Duration
			failed := map[string]int{}
			var reply []byte
			for i := k; time.Now().Before(end); i += concurrency {
				d := devices[i%len(devices)]
				ctx, cancel := context.WithTimeout(d.ctx, deadline)
				sent := time.Now()
				err := d.conn.Invoke(ctx, method, &d.request, &reply)
				done := time.Now()
				cancel()
				if err != nil {
					failed[status.Code(err).String()]++
				} else if !done.After(end) {
					mine = append(mine, done.Sub(sent))
				}
			}
			mu.Lock()
			ok += len(mine)
			latencies = append(latencies, mine...)
			for code, n := range failed {
				errors[code] += n
			}
			mu.Unlock()
		}(k)
	}
	wg.Wait()
	sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
	percentile := func(q float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	return result{OK: ok, Errors: errors, P50Ms: percentile(0.5), P99Ms: percentile(0.99), CPUSeconds: cpuSeconds() - cpuBefore}
}
