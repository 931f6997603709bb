# Shell helpers shared by the README demo (dev.sh) and bench/pull.sh: write
# an OCI image layout from layer blobs, and run Debian's docker-registry on
# a free loopback port. Source this file; it defines functions only.

# oci_add_blob DIR FILE -> prints "sha256:<hex> <size>", moving FILE into
# DIR/blobs/sha256/.
oci_add_blob() {
  local dir=$1 file=$2 hex size
  mkdir -p "$dir/blobs/sha256"
  hex=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mv "$file" "$dir/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# oci_write_image DIR TAG CONFIG_DIFF_IDS_JSON LAYER_DESCRIPTORS_JSON
# Writes config, manifest, index.json and oci-layout for one linux/amd64
# image whose layers are the given descriptors (a JSON list body) and whose
# rootfs.diff_ids are the given list body.
oci_write_image() {
  local dir=$1 tag=$2 diffs=$3 layers=$4 c m
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$diffs" >"$dir/config.json"
  read -r c csize < <(oci_add_blob "$dir" "$dir/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
    "$c" "$csize" "$layers" >"$dir/manifest.json"
  read -r m msize < <(oci_add_blob "$dir" "$dir/manifest.json")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$m" "$msize" "$tag" >"$dir/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
}

# registry_start WORKDIR -> sets REGISTRY_PORT and REGISTRY_PID.
registry_start() {
  local w=$1
  REGISTRY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$w/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $w/registry}}
http: {addr: 127.0.0.1:$REGISTRY_PORT}
YML
  docker-registry serve "$w/registry.yml" >"$w/registry.log" 2>&1 &
  REGISTRY_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null && return 0
    sleep 0.1
  done
  echo "docker-registry did not start (see $w/registry.log)" >&2
  return 1
}

# registry_start_tls WORKDIR -> the same over TLS with a throwaway
# self-signed certificate (so HTTP/2 is offered); sets REGISTRY_CA too.
registry_start_tls() {
  local w=$1
  REGISTRY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$w/key.pem" -out "$w/cert.pem" -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
  REGISTRY_CA=$w/cert.pem
  cat >"$w/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $w/registry}}
http:
  addr: 127.0.0.1:$REGISTRY_PORT
  tls: {certificate: $w/cert.pem, key: $w/key.pem}
YML
  docker-registry serve "$w/registry.yml" >"$w/registry.log" 2>&1 &
  REGISTRY_PID=$!
  for _ in $(seq 100); do
    curl -sf --cacert "$REGISTRY_CA" "https://127.0.0.1:$REGISTRY_PORT/v2/" >/dev/null && return 0
    sleep 0.1
  done
  echo "docker-registry (TLS) did not start (see $w/registry.log)" >&2
  return 1
}

# oci_layer_from_convert CONVERT_JSON LAYER OCI_DIR TAG
# Writes a one-layer image to OCI_DIR from a layer made by `lazypull convert`
# (its JSON report gives digest, size, diff_id and the annotations the layer
# descriptor needs). LAYER is copied, not moved.
oci_layer_from_convert() {
  local json=$1 layer=$2 dir=$3 tag=$4
  python3 - "$json" >"$dir.desc" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print(json.dumps({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                  "digest": c["blob_digest"], "size": c["blob_size"],
                  "annotations": c["annotations"]}))
print('"%s"' % c["diff_id"])
PY
  mkdir -p "$dir"
  cp "$layer" "$dir.layer"
  oci_add_blob "$dir" "$dir.layer" >/dev/null
  oci_write_image "$dir" "$tag" "$(sed -n 2p "$dir.desc")" "$(sed -n 1p "$dir.desc")"
  rm -f "$dir.desc"
}
