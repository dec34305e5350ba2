module haddock/golang-wrapper

go 1.19
