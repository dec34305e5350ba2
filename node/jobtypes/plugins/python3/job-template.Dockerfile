# A python3 job: the base image, the job's requirements from the wheelhouse the node prepared on the
# host (no network in the build), the job's source in /src/job.
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

{% if manifest.python.requirements_path %}
COPY .haddock-wheelhouse/ /src/wheelhouse/
COPY "{{ manifest.python.requirements_path }}" /src/job-requirements.txt
RUN /opt/job-venv/bin/pip install --no-index --find-links /src/wheelhouse -r /src/job-requirements.txt
{% endif %}

COPY . /src/job/
RUN /opt/job-venv/bin/python -m py_compile "/src/job/{{ manifest.python.entrypoint_path }}"

ENV JOB_ENTRYPOINT_PATH="{{ manifest.python.entrypoint_path }}"
ENV JOB_ENTRYPOINT_CLASS="{{ manifest.python.entrypoint_class or '' }}"
ENV JOB_NAME="{{ manifest.name }}"
ENV JOB_VERSION="{{ manifest.version }}"
ENV GIT_VERSION="{{ git_version }}"
ENV DEPLOYED_BY_RACETRACK_VERSION="{{ deployed_by_racetrack_version }}"
