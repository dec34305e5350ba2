# A golang job: the base image, the job's source in /src/job, the wrapper compiled into its module.
FROM {{ base_image }}

{% for env_key, env_value in env_vars.items() %}
ENV {{ env_key }}="{{ env_value }}"
{% endfor %}

{% if manifest.system_dependencies and manifest.system_dependencies|length > 0 %}
# One layer: the package lists (a base image ships none), the packages, the lists removed again.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {{ manifest.system_dependencies | join(' ') }} \
    && rm -rf /var/lib/apt/lists/*
{% endif %}

COPY . /src/job/
# The wrapper becomes package main of the job's own module, importing the job's root package: the job's
# go.mod, go.sum and vendor/ apply as they are. Dependencies come from vendor/ or a module proxy (GOPROXY).
RUN set -e; cd /src/job; \
    gomod="{{ manifest.golang.gomod or 'go.mod' }}"; \
    if [ ! -f "$gomod" ]; then go mod init job >/dev/null 2>&1; gomod=go.mod; fi; \
    mod=$(sed -n 's/^module[[:space:]]*//p' "$gomod" | tr -d '"' | head -n 1); \
    mkdir -p haddock_wrapper; \
    for f in /src/go_wrapper/*.go; do sed "s#\"racetrack/job\"#\"$mod\"#" "$f" > "haddock_wrapper/$(basename "$f")"; done; \
    if ! go build -o /src/go_wrapper/go_wrapper ./haddock_wrapper 2>/tmp/go-build.log; then \
        cat /tmp/go-build.log; \
        if grep -q -e 'GOPROXY=off' -e 'module lookup disabled' /tmp/go-build.log; then \
            echo "haddock: this job's Go module needs downloads, but the node has no module proxy ([jobtypes] go_proxy) and the job does not vendor its dependencies (run 'go mod vendor')"; \
        fi; \
        exit 1; \
    fi

ENV JOB_NAME="{{ manifest.name }}"
ENV JOB_VERSION="{{ manifest.version }}"
ENV GIT_VERSION="{{ git_version }}"
ENV DEPLOYED_BY_RACETRACK_VERSION="{{ deployed_by_racetrack_version }}"
