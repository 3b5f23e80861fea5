// pod-sd writes the pods of the xci-cn sandbox that ask to be scraped as a
// Prometheus file_sd target list. The sandbox's Prometheus is Debian's build,
// which has no Kubernetes service discovery; this stands in for
// kubernetes_sd_configs (role pod) with the usual annotation relabelling:
//
//	prometheus.io/scrape: "true"   scrape this pod
//	prometheus.io/port:   "9180"   on this port (default: its first containerPort)
//	prometheus.io/path:   /metrics at this path (the default)
//
// Every --interval it lists the Running pods from the API server (client
// certificate), keeps those that ask and have an IP, and rewrites --output
// atomically when the list changed. API errors are logged and retried, never
// fatal. Standard library only, built by xci-cn's binary builder.
//
//	pod-sd --server https://127.0.0.1:6443 --ca ca.crt --cert admin.crt --key admin.key \
//	       --output prometheus-pods.json --health-port 9099 [--interval 2s] \
//	       [--skip-nodes-annotated kwok.x-k8s.io/node=fake]
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	scrapeAnnotation = "prometheus.io/scrape"
	portAnnotation   = "prometheus.io/port"
	pathAnnotation   = "prometheus.io/path"
	defaultPath      = "/metrics"
	// Only Running pods: the API server filters, the payload stays small.
	podsPath  = "/api/v1/pods?fieldSelector=status.phase%3DRunning"
	nodesPath = "/api/v1/nodes"
)

// The fields of a Pod and a Node that discovery reads.
type pod struct {
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *string           `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		NodeName   string `json:"nodeName"`
		Containers []struct {
			Ports []struct {
				ContainerPort int `json:"containerPort"`
			} `json:"ports"`
		} `json:"containers"`
	} `json:"spec"`
	Status struct {
		Phase string `json:"phase"`
		PodIP string `json:"podIP"`
	} `json:"status"`
}

type node struct {
	Metadata struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
}

// targetGroup is one entry of Prometheus' file_sd format.
type targetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// targets turns pods into target groups (sorted by namespace and name), and
// says why an annotated pod was left out when its annotations are wrong.
// Pods on skipNodes (simulated nodes: no process answers) and pods being
// deleted are left out silently.
func targets(pods []pod, skipNodes map[string]bool) ([]targetGroup, []string) {
	var groups []targetGroup
	var problems []string
	for _, p := range pods {
		m := p.Metadata
		if m.Annotations[scrapeAnnotation] != "true" || p.Status.Phase != "Running" || p.Status.PodIP == "" ||
			m.DeletionTimestamp != nil || skipNodes[p.Spec.NodeName] {
			continue
		}
		who := m.Namespace + "/" + m.Name
		port := 0
		if text, ok := m.Annotations[portAnnotation]; ok {
			n, err := strconv.Atoi(text)
			if err != nil || n < 1 || n > 65535 {
				problems = append(problems, fmt.Sprintf("%s: %s %q is not a port number", who, portAnnotation, text))
				continue
			}
			port = n
		} else {
			for _, c := range p.Spec.Containers {
				if len(c.Ports) > 0 {
					port = c.Ports[0].ContainerPort
					break
				}
			}
			if port == 0 {
				problems = append(problems, fmt.Sprintf("%s: no %s annotation and no containerPort", who, portAnnotation))
				continue
			}
		}
		path := defaultPath
		if text, ok := m.Annotations[pathAnnotation]; ok {
			if !strings.HasPrefix(text, "/") {
				problems = append(problems, fmt.Sprintf("%s: %s %q does not start with /", who, pathAnnotation, text))
				continue
			}
			path = text
		}
		labels := map[string]string{"__metrics_path__": path, "namespace": m.Namespace, "pod": m.Name}
		for _, key := range []string{"app", "version"} {
			if value, ok := m.Labels[key]; ok {
				labels[key] = value
			}
		}
		groups = append(groups, targetGroup{Targets: []string{net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port))},
			Labels: labels})
	}
	sort.Slice(groups, func(i, j int) bool {
		a, b := groups[i].Labels, groups[j].Labels
		return a["namespace"] < b["namespace"] || a["namespace"] == b["namespace"] && a["pod"] < b["pod"]
	})
	return groups, problems
}

// render is the file's content: "[]" for no targets (never "null").
func render(groups []targetGroup) []byte {
	if groups == nil {
		groups = []targetGroup{}
	}
	data, _ := json.MarshalIndent(groups, "", "  ") // maps and strings only: cannot fail
	return append(data, '\n')
}

// writeAtomic replaces path by data through a temporary file in the same
// directory, so that Prometheus never reads half a list.
func writeAtomic(path string, data []byte) error {
	temporary, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(temporary.Name()) // gone already after the rename
	if _, err := temporary.Write(data); err != nil {
		temporary.Close()
		return err
	}
	if err := temporary.Sync(); err != nil {
		temporary.Close()
		return err
	}
	if err := temporary.Close(); err != nil {
		return err
	}
	return os.Rename(temporary.Name(), path)
}

type apiClient struct {
	server string
	http   *http.Client
}

func newAPIClient(server, caFile, certFile, keyFile string) (*apiClient, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--ca %s: no PEM certificate in it", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		// The error names the files, never the key's content.
		return nil, fmt.Errorf("--cert %s / --key %s: %w", certFile, keyFile, err)
	}
	transport := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		Proxy:           nil, // the API server is on loopback: never through a proxy of the environment
	}
	return &apiClient{server: strings.TrimSuffix(server, "/"), http: &http.Client{Transport: transport, Timeout: 10 * time.Second}}, nil
}

func (c *apiClient) get(ctx context.Context, path string, into any) error {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+path, nil)
	if err != nil {
		return err
	}
	request.Header.Set("Accept", "application/json")
	reply, err := c.http.Do(request)
	if err != nil {
		return err
	}
	defer reply.Body.Close()
	if reply.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(reply.Body, 300))
		return fmt.Errorf("GET %s: %s: %s", path, reply.Status, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(reply.Body).Decode(into); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// list returns the Running pods and the names of the nodes to skip.
func (c *apiClient) list(ctx context.Context, skipKey, skipValue string) ([]pod, map[string]bool, error) {
	var pods struct {
		Items []pod `json:"items"`
	}
	if err := c.get(ctx, podsPath, &pods); err != nil {
		return nil, nil, err
	}
	skip := map[string]bool{}
	if skipKey != "" {
		var nodes struct {
			Items []node `json:"items"`
		}
		if err := c.get(ctx, nodesPath, &nodes); err != nil {
			return nil, nil, err
		}
		for _, n := range nodes.Items {
			if value, ok := n.Metadata.Annotations[skipKey]; ok && value == skipValue {
				skip[n.Metadata.Name] = true
			}
		}
	}
	return pods.Items, skip, nil
}

// health is what /healthz says: the last list's outcome.
type health struct {
	mu      sync.Mutex
	err     error
	targets int
	at      time.Time
}

func (h *health) set(err error, targets int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err, h.at = err, time.Now()
	if err == nil {
		h.targets = targets
	}
}

func (h *health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.at.IsZero():
		http.Error(w, "starting: no list yet", http.StatusServiceUnavailable)
	case h.err != nil:
		http.Error(w, "last list failed: "+h.err.Error(), http.StatusServiceUnavailable)
	default:
		fmt.Fprintf(w, "ok: %d targets, listed %s ago\n", h.targets, time.Since(h.at).Round(time.Millisecond))
	}
}

// changes names the pods added and removed, for the log (at most 10 of each).
func changes(before, after []targetGroup) string {
	names := func(groups []targetGroup) map[string]string {
		out := map[string]string{}
		for _, g := range groups {
			out[g.Labels["namespace"]+"/"+g.Labels["pod"]] = g.Targets[0] + g.Labels["__metrics_path__"]
		}
		return out
	}
	old, now := names(before), names(after)
	var parts []string
	for _, side := range []struct {
		sign     string
		from, in map[string]string
	}{{"+", now, old}, {"-", old, now}} {
		var keys []string
		for key, where := range side.from {
			if side.in[key] != where {
				keys = append(keys, key)
			}
		}
		sort.Strings(keys)
		for i, key := range keys {
			if i == 10 {
				parts = append(parts, fmt.Sprintf("%s%d more", side.sign, len(keys)-10))
				break
			}
			parts = append(parts, side.sign+key+" "+side.from[key])
		}
	}
	return strings.Join(parts, ", ")
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "pod-sd: "+message)
	os.Exit(2)
}

func main() {
	server := flag.String("server", "", "API server URL (https://127.0.0.1:PORT)")
	caFile := flag.String("ca", "", "CA certificate of the API server (PEM)")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	output := flag.String("output", "", "file_sd JSON file to write")
	healthPort := flag.Int("health-port", 0, "port of /healthz on 127.0.0.1")
	interval := flag.Duration("interval", 2*time.Second, "time between two lists")
	skipNodes := flag.String("skip-nodes-annotated", "", "KEY=VALUE: leave out pods of nodes annotated so (simulated nodes)")
	flag.Parse()
	for name, value := range map[string]string{"--server": *server, "--ca": *caFile, "--cert": *certFile,
		"--key": *keyFile, "--output": *output} {
		if value == "" {
			fail(name + " is required")
		}
	}
	if !strings.HasPrefix(*server, "https://") {
		fail(fmt.Sprintf("--server %q: give the API server's https:// URL", *server))
	}
	if *healthPort < 1 || *healthPort > 65535 {
		fail(fmt.Sprintf("--health-port %d: give a port number (1-65535)", *healthPort))
	}
	if *interval < 100*time.Millisecond {
		fail(fmt.Sprintf("--interval %v: at least 100ms", *interval))
	}
	skipKey, skipValue, _ := strings.Cut(*skipNodes, "=")
	client, err := newAPIClient(*server, *caFile, *certFile, *keyFile)
	if err != nil {
		fail(err.Error())
	}
	logger := log.New(os.Stderr, "pod-sd: ", log.LstdFlags|log.LUTC)

	state := &health{}
	mux := http.NewServeMux()
	mux.Handle("/healthz", state)
	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*healthPort)))
	if err != nil {
		fail(err.Error())
	}
	web := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := web.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Fatalf("/healthz: %v", err)
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger.Printf("listing pods of %s every %v into %s (client key %s)", *server, *interval, *output, *keyFile)
	// What the file holds now (the playbook writes "[]" at start): no rewrite
	// when nothing changed.
	written, _ := os.ReadFile(*output)
	var current []targetGroup
	_ = json.Unmarshal(written, &current)
	lastError, lastProblems := "", ""
	for {
		pods, skip, err := client.list(ctx, skipKey, skipValue)
		switch {
		case ctx.Err() != nil:
		case err != nil:
			state.set(err, 0)
			if err.Error() != lastError { // once per kind of failure, not every interval
				logger.Printf("listing pods failed (retrying every %v): %v", *interval, err)
				lastError = err.Error()
			}
		default:
			if lastError != "" {
				logger.Printf("listing pods works again")
				lastError = ""
			}
			groups, problems := targets(pods, skip)
			if joined := strings.Join(problems, "; "); joined != lastProblems {
				if joined != "" {
					logger.Printf("pods left out: %s", joined)
				}
				lastProblems = joined
			}
			data := render(groups)
			if !bytes.Equal(data, written) {
				if err := writeAtomic(*output, data); err != nil {
					logger.Printf("writing %s failed (retrying): %v", *output, err)
					state.set(err, 0)
					break
				}
				logger.Printf("%d targets (%s)", len(groups), changes(current, groups))
				written, current = data, groups
			}
			state.set(nil, len(groups))
		}
		select {
		case <-ctx.Done():
			shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = web.Shutdown(shutdown)
			cancel()
			logger.Printf("stopped")
			return
		case <-time.After(*interval):
		}
	}
}
