package main

import (
	"encoding/json"
	"net"
	"net/http"

	"github.com/diskmapper/disk-mapper/internal/logging"
	"go.uber.org/zap"
)

// metadataHandler serves GET /self (the requesting node's record) and GET
// /peers (every record).
//
// Which record is "self": with --self NAME, always that one. Under QEMU's
// user networking every guest is 10.0.2.15 and reaches the host through a
// guestfwd helper, so the request's source address says nothing about the
// node: run one metadata server per node, each with its own --self. Without
// --self the record whose vpcIP equals the request's source IP answers,
// which works where nodes reach the server with their own addresses.
type metadataHandler struct {
	instances []Instance
	self      string // name of the fixed self record; "" = by source IP
	log       *zap.Logger
}

func (h *metadataHandler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /self", h.serveSelf)
	mux.HandleFunc("GET /peers", h.servePeers)
	return mux
}

func (h *metadataHandler) serveSelf(w http.ResponseWriter, r *http.Request) {
	in, ok := h.lookupSelf(r)
	if !ok {
		h.log.Warn("No instance record for requester", logging.Event("metadata_self_unknown"), zap.String("peer", r.RemoteAddr))
		http.Error(w, "no instance record for this requester (start the server with --self NAME)", http.StatusNotFound)
		return
	}
	h.log.Info("Served self record", logging.Event("metadata_self"), zap.String("peer", r.RemoteAddr), zap.String("name", in.Name))
	writeJSON(w, in)
}

func (h *metadataHandler) servePeers(w http.ResponseWriter, r *http.Request) {
	h.log.Info("Served peer records", logging.Event("metadata_peers"), zap.String("peer", r.RemoteAddr), zap.Int("count", len(h.instances)))
	writeJSON(w, h.instances)
}

func (h *metadataHandler) lookupSelf(r *http.Request) (Instance, bool) {
	if h.self != "" {
		return h.byName(h.self)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return Instance{}, false
	}
	src := net.ParseIP(host)
	for _, in := range h.instances {
		if ip := net.ParseIP(in.VPCIP); ip != nil && ip.Equal(src) {
			return in, true
		}
	}
	return Instance{}, false
}

func (h *metadataHandler) byName(name string) (Instance, bool) {
	for _, in := range h.instances {
		if in.Name == name {
			return in, true
		}
	}
	return Instance{}, false
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
