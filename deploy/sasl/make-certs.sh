#!/bin/sh
# A private CA and the broker's certificate for deploy/compose.sasl.yml (SASL_SSL), written
# to deploy/sasl/certs/: ca.pem (what riverbed trusts: broker.ssl_cafile) and
# broker-keystore.pem (the broker's key + chain; Kafka's ssl.keystore.type=PEM). The names
# the certificate carries: kafka (the compose service), localhost, 127.0.0.1.
# For anything beyond a local stack, use certificates from your own CA instead.
set -eu
out="$(cd "$(dirname "$0")" && pwd)/certs"
mkdir -p "$out"
cd "$out"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 365 \
  -subj "/CN=riverbed local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=kafka" \
  2>/dev/null
printf 'subjectAltName=DNS:kafka,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
  > san.cnf
openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem \
  -days 365 -extfile san.cnf 2>/dev/null
cat broker.key broker.pem ca.pem > broker-keystore.pem
rm -f broker.csr san.cnf ca.srl
chmod 644 ca.pem broker-keystore.pem  # the containers' users read them (mounted read-only)
echo "$out: ca.pem, broker-keystore.pem"
