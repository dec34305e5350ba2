# The golang job type's base image: the toolchain image ([jobtypes.base_images] golang) plus the wrapper,
# compiled once against a stub job so that Go's build cache is warm. Rendered with Jinja2 (base_image).
FROM {{ base_image }}
ENV CGO_ENABLED=0 GOPROXY=off GOFLAGS= GOTOOLCHAIN=local GOCACHE=/root/.cache/go-build HOME=/root
COPY go_wrapper/ /src/go_wrapper/
COPY stub/ /src/stub/
RUN set -e; cd /src/stub; mkdir haddock_wrapper; \
    for f in /src/go_wrapper/*.go; do cp "$f" haddock_wrapper/; done; \
    go build -o /tmp/wrapper-check ./haddock_wrapper && rm -rf /tmp/wrapper-check /src/stub
WORKDIR /src/job
CMD ["/src/go_wrapper/go_wrapper"]
LABEL racetrack-component="job"
