package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func podJSON(t *testing.T, text string) pod {
	t.Helper()
	var p pod
	if err := json.Unmarshal([]byte(text), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

const running = `"status": {"phase": "Running", "podIP": "10.244.0.7"}`

func TestTargetsFollowTheAnnotations(t *testing.T) {
	pods := []pod{
		podJSON(t, `{"metadata": {"name": "web-b", "namespace": "sdc", "labels": {"app": "web", "version": "v2", "other": "x"},
			"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9180", "prometheus.io/path": "/stats"}},
			"spec": {"nodeName": "node1", "containers": [{"ports": [{"containerPort": 8080}]}]}, `+running+`}`),
		// no port annotation: the first containerPort; no path: /metrics; no labels: none
		podJSON(t, `{"metadata": {"name": "web-a", "namespace": "sdc", "annotations": {"prometheus.io/scrape": "true"}},
			"spec": {"nodeName": "node1", "containers": [{}, {"ports": [{"containerPort": 8080}, {"containerPort": 9}]}]},
			"status": {"phase": "Running", "podIP": "10.244.0.8"}}`),
		podJSON(t, `{"metadata": {"name": "not-asked", "namespace": "sdc", "annotations": {"prometheus.io/scrape": "false"}},
			"spec": {"containers": [{"ports": [{"containerPort": 80}]}]}, `+running+`}`),
		podJSON(t, `{"metadata": {"name": "pending", "namespace": "sdc", "annotations": {"prometheus.io/scrape": "true"}},
			"spec": {"containers": [{"ports": [{"containerPort": 80}]}]}, "status": {"phase": "Pending"}}`),
		podJSON(t, `{"metadata": {"name": "no-ip", "namespace": "sdc", "annotations": {"prometheus.io/scrape": "true"}},
			"spec": {"containers": [{"ports": [{"containerPort": 80}]}]}, "status": {"phase": "Running"}}`),
		podJSON(t, `{"metadata": {"name": "leaving", "namespace": "sdc", "deletionTimestamp": "2026-12-01T15:00:00Z",
			"annotations": {"prometheus.io/scrape": "true"}},
			"spec": {"containers": [{"ports": [{"containerPort": 80}]}]}, `+running+`}`),
		podJSON(t, `{"metadata": {"name": "simulated", "namespace": "sdc", "annotations": {"prometheus.io/scrape": "true"}},
			"spec": {"nodeName": "kwok1", "containers": [{"ports": [{"containerPort": 80}]}]}, `+running+`}`),
		podJSON(t, `{"metadata": {"name": "bad-port", "namespace": "sdc",
			"annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "http"}}, `+running+`}`),
		podJSON(t, `{"metadata": {"name": "no-port", "namespace": "sdc", "annotations": {"prometheus.io/scrape": "true"}},
			"spec": {"containers": [{}]}, `+running+`}`),
		podJSON(t, `{"metadata": {"name": "bad-path", "namespace": "sdc",
			"annotations": {"prometheus.io/scrape": "true", "prometheus.io/path": "metrics"}},
			"spec": {"containers": [{"ports": [{"containerPort": 80}]}]}, `+running+`}`),
	}
	groups, problems := targets(pods, map[string]bool{"kwok1": true})
	want := []targetGroup{
		{Targets: []string{"10.244.0.8:8080"}, Labels: map[string]string{"__metrics_path__": "/metrics", "namespace": "sdc", "pod": "web-a"}},
		{Targets: []string{"10.244.0.7:9180"}, Labels: map[string]string{"__metrics_path__": "/stats", "namespace": "sdc", "pod": "web-b",
			"app": "web", "version": "v2"}},
	}
	if !reflect.DeepEqual(groups, want) {
		t.Errorf("targets:\n got %+v\nwant %+v", groups, want)
	}
	wantProblems := []string{
		`sdc/bad-port: prometheus.io/port "http" is not a port number`,
		`sdc/no-port: no prometheus.io/port annotation and no containerPort`,
		`sdc/bad-path: prometheus.io/path "metrics" does not start with /`,
	}
	if !reflect.DeepEqual(problems, wantProblems) {
		t.Errorf("problems:\n got %q\nwant %q", problems, wantProblems)
	}
	if got := string(render(nil)); got != "[]\n" {
		t.Errorf("no targets render as %q", got)
	}
}

func TestWriteAtomicReplacesTheFileAndLeavesNoTemporary(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pods.json")
	for _, text := range []string{"[]\n", "[1]\n"} {
		if err := writeAtomic(path, []byte(text)); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != text {
			t.Errorf("file holds %q, want %q", got, text)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left in the directory: %v", entries)
	}
}

// writePEM writes a fresh client certificate and key for the TLS test.
func writePEM(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

func TestListsPodsWithTheClientCertificateAndSkipsAnnotatedNodes(t *testing.T) {
	var seen []string
	api := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) != 1 {
			http.Error(w, "no client certificate", http.StatusUnauthorized)
			return
		}
		seen = append(seen, r.URL.RequestURI())
		switch r.URL.Path {
		case "/api/v1/pods":
			w.Write([]byte(`{"items": [{"metadata": {"name": "p", "namespace": "n"}, "spec": {"nodeName": "kwok1"}}]}`))
		case "/api/v1/nodes":
			w.Write([]byte(`{"items": [{"metadata": {"name": "kwok1", "annotations": {"kwok.x-k8s.io/node": "fake"}}},
				{"metadata": {"name": "node1", "annotations": {"kwok.x-k8s.io/node": "real"}}}]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	api.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	api.StartTLS()
	defer api.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}), 0o600)
	certFile, keyFile := writePEM(t, dir)
	client, err := newAPIClient(api.URL+"/", caFile, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pods, skip, err := client.list(context.Background(), "kwok.x-k8s.io/node", "fake")
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 || pods[0].Metadata.Name != "p" || !reflect.DeepEqual(skip, map[string]bool{"kwok1": true}) {
		t.Errorf("pods %+v, skip %v", pods, skip)
	}
	if want := []string{"/api/v1/pods?fieldSelector=status.phase%3DRunning", "/api/v1/nodes"}; !reflect.DeepEqual(seen, want) {
		t.Errorf("requests %q, want %q", seen, want)
	}
	// An answer that is not 200 is an error naming the status, not a crash.
	client.server = api.URL + "/nowhere"
	if _, _, err := client.list(context.Background(), "", ""); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("error %v", err)
	}
	if _, err := newAPIClient(api.URL, certFile+".missing", certFile, keyFile); err == nil ||
		!strings.HasPrefix(err.Error(), "--ca: ") {
		t.Errorf("a missing CA file: %v", err)
	}
}
