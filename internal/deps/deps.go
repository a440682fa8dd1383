// Package deps pins the module versions the packages under construction use,
// so that parallel work does not race on go.mod. It goes away once every
// dependency has a real importer.
package deps

import (
	_ "github.com/google/go-tpm/tpm2"
	_ "github.com/martinjungblut/go-cryptsetup"
	_ "go.uber.org/goleak"
	_ "google.golang.org/genproto/googleapis/rpc/errdetails"
)
