package recoveryserver

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// The benchmark's flood comes from a process of its own, as the host's
// connections come from outside the guest: the flooding clients' CPU and
// garbage must not be charged to the node's process (its garbage
// collector, its scheduler), only what the node itself does about them.
//
// Protocol on the helper's stdin/stdout, one line each:
//
//	open N   → "flooder: up K" once every dial ended (K TLS handshakes done),
//	           after "flooder: half" when N/2 were up
//	close    → closes every connection → "flooder: closed"
//
// EOF on stdin closes everything and ends the helper.

const flooderEnv = "RECOVERYSERVER_FLOODER_ADDR"

// TestFlooderProcess is the helper's body; it does nothing in a normal run.
func TestFlooderProcess(t *testing.T) {
	addr := os.Getenv(flooderEnv)
	if addr == "" {
		t.Skip("helper process for BenchmarkTimeToKeyUnderQuoteFlood")
	}
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "open":
			n, err := strconv.Atoi(arg)
			if err != nil {
				t.Fatal(err)
			}
			up := 0
			done := make(chan []net.Conn, 1)
			count := make(chan struct{}, n)
			go func() {
				done <- floodTLSWith(t, addr, n, func() { count <- struct{}{} })
			}()
		wait:
			for {
				select {
				case <-count:
					if up++; up == n/2 {
						fmt.Println("flooder: half")
					}
				case conns = <-done:
					break wait
				}
			}
			fmt.Printf("flooder: up %d\n", len(conns))
		case "close":
			closeAll(conns)
			conns = nil
			fmt.Println("flooder: closed")
		}
	}
}

// flooder is the benchmark's handle on the helper process.
type flooder struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	rawOut io.Reader
	out    *bufio.Scanner
}

func startFlooder(tb testing.TB, addr string) *flooder {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFlooderProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), flooderEnv+"="+addr)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	f := &flooder{cmd: cmd, in: in, rawOut: out, out: bufio.NewScanner(out)}
	tb.Cleanup(f.stop)
	return f
}

// send writes a command; await reads up to the first line that starts with
// one of want and returns it.
func (f *flooder) send(tb testing.TB, line string) {
	tb.Helper()
	if _, err := fmt.Fprintln(f.in, line); err != nil {
		tb.Fatalf("flooder: %v", err)
	}
}

func (f *flooder) await(tb testing.TB, want ...string) string {
	tb.Helper()
	for f.out.Scan() {
		line, ok := strings.CutPrefix(f.out.Text(), "flooder: ")
		for _, w := range want {
			if ok && strings.HasPrefix(line, w) {
				return line
			}
		}
	}
	tb.Fatalf("flooder ended before %q: %v", want, f.out.Err())
	return ""
}

// open has the helper open n TLS connections and returns how many finished
// their handshake.
func (f *flooder) open(tb testing.TB, n int) int {
	tb.Helper()
	f.send(tb, fmt.Sprintf("open %d", n))
	return f.upCount(tb, f.await(tb, "up"))
}

func (f *flooder) upCount(tb testing.TB, line string) int {
	tb.Helper()
	k, err := strconv.Atoi(strings.TrimPrefix(line, "up "))
	if err != nil {
		tb.Fatalf("flooder: %q", line)
	}
	return k
}

// closeAll has the helper close all its connections at once.
func (f *flooder) closeAll(tb testing.TB) {
	tb.Helper()
	f.send(tb, "close")
	f.await(tb, "closed")
}

// stop ends the helper (EOF on stdin) and waits for it; it is the only
// process the benchmark starts, and it is stopped through its own handle.
func (f *flooder) stop() {
	f.in.Close()
	_, _ = io.Copy(io.Discard, f.rawOut)
	_ = f.cmd.Wait()
}
