package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

// EntrypointHandler is the job's function: func Perform(input map[string]interface{}) (interface{}, error)
type EntrypointHandler func(input map[string]interface{}) (interface{}, error)

var (
	requestsTotal int64
	errorsTotal   int64
)

// WrapAndServe embeds the function in an HTTP server and serves until the process ends.
func WrapAndServe(entrypoint EntrypointHandler) error {
	jobName := os.Getenv("JOB_NAME")
	prefix := fmt.Sprintf("/pub/job/%s/", jobName)
	routes := map[string]http.HandlerFunc{
		"/api/v1/perform": performHandler(entrypoint),
		"/health":         healthHandler,
		"/live":           liveHandler,
		"/ready":          readyHandler,
		"/metrics":        metricsHandler,
		"/":               rootHandler,
	}
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		// /pub/job/{name}/{version}/...: any version ("latest", "1.x", "0.0.1") reaches the same job.
		if strings.HasPrefix(path, prefix) {
			rest := strings.TrimPrefix(path, prefix)
			if i := strings.Index(rest, "/"); i >= 0 {
				path = rest[i:]
			} else {
				path = "/"
			}
		}
		route, ok := routes[path]
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "not found: " + r.URL.Path})
			return
		}
		log.Printf("request method=%s uri=%s ip=%s", r.Method, r.RequestURI, r.RemoteAddr)
		route(w, r)
	})
	listen := "0.0.0.0:7000"
	log.Printf("listening on %s (base URLs: / and %s{version}/)", listen, prefix)
	return http.ListenAndServe(listen, mux)
}

func performHandler(entrypoint EntrypointHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		atomic.AddInt64(&requestsTotal, 1)
		if req.Method != http.MethodPost {
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use POST with a JSON object"})
			return
		}
		var input map[string]interface{}
		if err := json.NewDecoder(req.Body).Decode(&input); err != nil {
			atomic.AddInt64(&errorsTotal, 1)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		output, err := entrypoint(input)
		if err != nil {
			atomic.AddInt64(&errorsTotal, 1)
			log.Printf("perform failed: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, http.StatusOK, output)
	}
}

func writeJSON(w http.ResponseWriter, status int, value interface{}) {
	body, err := json.Marshal(value)
	if err != nil {
		http.Error(w, "the result is not JSON: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func deploymentTimestamp() int {
	ts, _ := strconv.Atoi(os.Getenv("JOB_DEPLOYMENT_TIMESTAMP"))
	return ts
}

func healthHandler(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"service":                       "job",
		"job_name":                      os.Getenv("JOB_NAME"),
		"job_version":                   os.Getenv("JOB_VERSION"),
		"git_version":                   os.Getenv("GIT_VERSION"),
		"deployed_by_racetrack_version": os.Getenv("DEPLOYED_BY_RACETRACK_VERSION"),
		"deployment_timestamp":          deploymentTimestamp(),
		"status":                        "pass",
	})
}

func liveHandler(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]interface{}{"status": "live", "deployment_timestamp": deploymentTimestamp()})
}

func readyHandler(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func metricsHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# TYPE perform_requests_total counter\nperform_requests_total %d\n", atomic.LoadInt64(&requestsTotal))
	fmt.Fprintf(w, "# TYPE perform_errors_total counter\nperform_errors_total %d\n", atomic.LoadInt64(&errorsTotal))
}

func rootHandler(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"job_name":  os.Getenv("JOB_NAME"),
		"endpoints": []string{"POST /api/v1/perform", "GET /health", "GET /live", "GET /ready", "GET /metrics"},
	})
}
