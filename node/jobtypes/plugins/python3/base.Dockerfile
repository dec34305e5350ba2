# The python3 job type's base image: the interpreter image ([jobtypes.base_images] python3), a virtual
# environment for the job's requirements, and the wrapper (standard library only). Rendered with Jinja2.
FROM {{ base_image }}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/job-venv
COPY python_wrapper/ /src/python_wrapper/
RUN /opt/job-venv/bin/python -m py_compile /src/python_wrapper/haddock_job_wrapper.py
WORKDIR /src/job
CMD ["/opt/job-venv/bin/python", "/src/python_wrapper/haddock_job_wrapper.py"]
LABEL racetrack-component="job"
