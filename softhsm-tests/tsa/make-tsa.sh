#!/usr/bin/env bash
# Creates a self-contained local RFC 3161 TSA (for tests and `anchorlog dev`) in DIR:
#   ca.pem / ca.key     root CA (the file to configure as the TSA trust anchor)
#   tsa.pem / tsa.key   TSA signing certificate (critical EKU timeStamping unless told otherwise)
#   int.pem / int.key   intermediate CA (only with --intermediate; embedded in every token)
#   noeku.pem / .key    a second signing certificate from the same CA without any extendedKeyUsage
#                       (tsa_http.py's `noeku` fault mode signs with it; verifiers must reject its tokens)
#   tsa.cnf             `openssl ts -reply -config DIR/tsa.cnf` configuration
#   tsaserial           serial number counter
# Needs only openssl (1.1.1 or 3.x). Usage:
#   make-tsa.sh DIR [--fraction] [--no-eku] [--eku-noncritical] [--ca-name NAME]
#                   [--key ec|p384|rsa] [--ess-sha1] [--intermediate] [--policy OID]
#   --fraction         genTime with milliseconds (clock_precision_digits = 3)
#   --no-eku           TSA certificate without extendedKeyUsage (verifiers must reject its tokens)
#   --eku-noncritical  timeStamping EKU present but not critical (verifiers must reject)
#                      NB: `openssl ts -reply` itself refuses to sign with these two certificates
#                      ("invalid signer certificate purpose"); sign test tokens with
#                      `openssl cms -sign -cades -nodetach -econtent_type 1.2.840.113549.1.9.16.1.4`.
#   --ca-name NAME     CN of the root CA (default "Test TSA Root")
#   --key KIND         ec = P-256/SHA-256 (default), p384 = P-384/SHA-384, rsa = RSA-2048/SHA-256
#   --ess-sha1         ESSCertID v1 (SHA-1, signingCertificate) instead of ESSCertIDv2 (SHA-256)
#   --intermediate     root -> intermediate CA -> TSA; the token carries the intermediate
#   --policy OID       default policy (default 1.3.6.1.4.1.55555.1.1)
# Broken chains (verifiers must refuse their tokens; `openssl ts -reply` signs them all the same):
#   --int-no-keycertsign  like --intermediate, but the intermediate's keyUsage lacks keyCertSign
#   --beyond-pathlen      root -> intermediate (pathlen:0) -> second intermediate -> TSA: one CA too many
#   --unknown-critical    the TSA certificate carries a critical extension no verifier knows (1.3.6.1.4.1.55555.99)
set -euo pipefail

die() { echo "make-tsa.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: make-tsa.sh DIR [options] (see the header of this script)"
DIR=$1; shift
FRACTION=0; EKU=critical; CA_NAME="Test TSA Root"; KEY=ec; ESS_ALG=sha256; INTERMEDIATE=0
INT_KU="critical,keyCertSign,cRLSign"; SECOND_INT=0; UNKNOWN_CRITICAL=0
POLICY=1.3.6.1.4.1.55555.1.1
while [ $# -gt 0 ]; do
  case "$1" in
    --fraction) FRACTION=3 ;;
    --no-eku) EKU=none ;;
    --eku-noncritical) EKU=noncritical ;;
    --ca-name) [ $# -ge 2 ] || die "--ca-name needs a value"; CA_NAME=$2; shift ;;
    --key) [ $# -ge 2 ] || die "--key needs ec|p384|rsa"; KEY=$2; shift ;;
    --ess-sha1) ESS_ALG=sha1 ;;
    --intermediate) INTERMEDIATE=1 ;;
    --int-no-keycertsign) INTERMEDIATE=1; INT_KU="critical,digitalSignature,cRLSign" ;;
    --beyond-pathlen) INTERMEDIATE=1; SECOND_INT=1 ;;
    --unknown-critical) UNKNOWN_CRITICAL=1 ;;
    --policy) [ $# -ge 2 ] || die "--policy needs an OID"; POLICY=$2; shift ;;
    *) die "unknown option $1" ;;
  esac
  shift
done

case "$KEY" in
  ec)   NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); MD=sha256 ;;
  p384) NEWKEY=(-newkey ec -pkeyopt ec_paramgen_curve:P-384); MD=sha384 ;;
  rsa)  NEWKEY=(-newkey rsa:2048); MD=sha256 ;;
  *) die "--key must be ec, p384 or rsa (got $KEY)" ;;
esac

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
cd "$DIR"
umask 077

openssl req -x509 "${NEWKEY[@]}" -nodes -"$MD" -keyout ca.key -out ca.pem -days 3650 \
  -subj "/CN=$CA_NAME" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

ISSUER_PEM=ca.pem; ISSUER_KEY=ca.key
if [ "$INTERMEDIATE" = 1 ]; then
  openssl req -new "${NEWKEY[@]}" -nodes -keyout int.key -out int.csr -subj "/CN=Test TSA Intermediate" 2>/dev/null
  printf '%s\n' "basicConstraints = critical,CA:TRUE,pathlen:0" "keyUsage = $INT_KU" \
    "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" > int_ext.cnf
  openssl x509 -req -in int.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out int.pem -days 1825 \
    -"$MD" -extfile int_ext.cnf 2>/dev/null
  ISSUER_PEM=int.pem; ISSUER_KEY=int.key
  cp int.pem chain.pem
fi
if [ "$SECOND_INT" = 1 ]; then
  # A CA below an intermediate whose pathlen:0 allows none: every path through it is invalid.
  openssl req -new "${NEWKEY[@]}" -nodes -keyout int2.key -out int2.csr -subj "/CN=Test TSA Second Intermediate" 2>/dev/null
  printf '%s\n' "basicConstraints = critical,CA:TRUE" "keyUsage = critical,keyCertSign,cRLSign" \
    "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" > int2_ext.cnf
  openssl x509 -req -in int2.csr -CA int.pem -CAkey int.key -CAcreateserial -out int2.pem -days 1825 \
    -"$MD" -extfile int2_ext.cnf 2>/dev/null
  ISSUER_PEM=int2.pem; ISSUER_KEY=int2.key
  cat int2.pem int.pem > chain.pem
fi

openssl req -new "${NEWKEY[@]}" -nodes -keyout tsa.key -out tsa.csr -subj "/CN=Test TSA" 2>/dev/null
{
  echo "basicConstraints = critical,CA:FALSE"
  echo "keyUsage = critical,digitalSignature,nonRepudiation"
  case "$EKU" in
    critical) echo "extendedKeyUsage = critical,timeStamping" ;;
    noncritical) echo "extendedKeyUsage = timeStamping" ;;
    none) ;;
  esac
  echo "subjectKeyIdentifier = hash"
  echo "authorityKeyIdentifier = keyid"
  [ "$UNKNOWN_CRITICAL" = 1 ] && echo "1.3.6.1.4.1.55555.99 = critical,ASN1:NULL"
  true
} > tsa_ext.cnf
openssl x509 -req -in tsa.csr -CA "$ISSUER_PEM" -CAkey "$ISSUER_KEY" -CAcreateserial -out tsa.pem \
  -days 825 -"$MD" -extfile tsa_ext.cnf 2>/dev/null
# Same issuer, no EKU: tokens it signs must be rejected although the chain is trusted.
openssl req -new "${NEWKEY[@]}" -nodes -keyout noeku.key -out noeku.csr -subj "/CN=Test TSA without EKU" 2>/dev/null
printf '%s\n' "basicConstraints = critical,CA:FALSE" "keyUsage = critical,digitalSignature,nonRepudiation" \
  "subjectKeyIdentifier = hash" "authorityKeyIdentifier = keyid" > noeku_ext.cnf
openssl x509 -req -in noeku.csr -CA "$ISSUER_PEM" -CAkey "$ISSUER_KEY" -CAcreateserial -out noeku.pem \
  -days 825 -"$MD" -extfile noeku_ext.cnf 2>/dev/null
echo 00 > tsaserial   # openssl increments before use: the first token gets serial 01

CERTS_LINE="# certs: none (single-certificate tokens; see the notes on unsorted SET OF)"
[ "$INTERMEDIATE" = 1 ] && CERTS_LINE="certs = \$dir/chain.pem"
cat > tsa.cnf <<CNF
# Generated by make-tsa.sh: openssl ts -reply -config $DIR/tsa.cnf -queryfile q.tsq -out r.tsr
[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir                    = $DIR
serial                 = \$dir/tsaserial
crypto_device          = builtin
signer_cert            = \$dir/tsa.pem
signer_key             = \$dir/tsa.key
signer_digest          = $MD
$CERTS_LINE
default_policy         = $POLICY
other_policies         = 1.3.6.1.4.1.55555.1.2
digests                = sha256, sha384, sha512
accuracy               = secs:1, millisecs:0, microsecs:0
clock_precision_digits = $FRACTION
ordering               = no
tsa_name               = yes
ess_cert_id_chain      = no
ess_cert_id_alg        = $ESS_ALG
CNF
rm -f ./*.csr
echo "$DIR"
