// The golang job type's wrapper: serves the job's Perform function over HTTP on 0.0.0.0:7000, at the root
// and under /pub/job/{JOB_NAME}/{any version}. Go's standard library only.
//
// At build time the job template copies these files into the job's own module (as package main in
// haddock_wrapper/) and replaces the import path "racetrack/job" with the job's module path, so that the
// job's go.mod, go.sum and vendor/ directory are used as they are.
package main

import (
	handler "racetrack/job"
)

func main() {
	if err := WrapAndServe(handler.Perform); err != nil {
		panic(err)
	}
}
