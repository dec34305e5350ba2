// A stand-in for a job, used once when the base image is built: it compiles the wrapper and fills
// Go's build cache, so that each job's build compiles only the job.
package job

func Perform(input map[string]interface{}) (interface{}, error) { return input, nil }
