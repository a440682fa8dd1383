//go:build vmtest

package integration

import (
	"fmt"
	"io"
	"sort"
	"time"
)

// printImageColumns prints the per-image columns of the timing table: the
// median (min–max, n) of QEMU start → "Waiting for decryption key" and of
// key served → mapped, one column per image.
func printImageColumns(w io.Writer, boots []bootTiming) {
	images := []string{"busybox", "systemd"}
	cell := func(image string, get func(bootTiming) time.Duration) string {
		var ds []time.Duration
		for _, bt := range boots {
			if bt.image == image && get(bt) > 0 {
				ds = append(ds, get(bt))
			}
		}
		if len(ds) == 0 {
			return "-"
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return fmt.Sprintf("%d (%d–%d, n=%d)", ds[len(ds)/2].Milliseconds(), ds[0].Milliseconds(), ds[len(ds)-1].Milliseconds(), len(ds))
	}
	fmt.Fprintf(w, "\n%-28s", "median ms (min–max, n)")
	for _, im := range images {
		fmt.Fprintf(w, " %-26s", im)
	}
	fmt.Fprintln(w)
	for _, row := range []struct {
		name string
		get  func(bootTiming) time.Duration
	}{
		{"QEMU→waiting", func(bt bootTiming) time.Duration { return bt.toWaiting }},
		{"key served→mapped", func(bt bootTiming) time.Duration { return bt.servedToMapped }},
		{"QEMU→mapped", func(bt bootTiming) time.Duration { return bt.toMapped }},
	} {
		fmt.Fprintf(w, "%-28s", row.name)
		for _, im := range images {
			fmt.Fprintf(w, " %-26s", cell(im, row.get))
		}
		fmt.Fprintln(w)
	}
}
