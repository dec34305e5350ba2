module racetrack/job

go 1.19
