#!/bin/sh
# Regenerates the static test vectors in this folder with the openssl CLI — an encryption side
# written independently of guestagent's decryption code. Test keys only; nothing here is secret.
set -eu
cd "$(dirname "$0")"
days=36500
# transport pair (as `openssl req -x509` makes it: SKI, AKI, CA:TRUE)
openssl req -x509 -nodes -subj /CN=LinuxTransport -days $days -newkey rsa:2048 \
    -keyout transport.key -out transport.crt 2>/dev/null
# tenant certificates: one with a key (like TenantEncryptionCert), a second with a key, a CA without key
openssl req -x509 -nodes -subj "/DC=Test CRP Certificate Generator" -days $days -newkey rsa:2048 \
    -keyout tenant.key -out tenant.crt 2>/dev/null
openssl req -x509 -nodes -subj "/CN=keypair" -days $days -newkey rsa:2048 \
    -keyout keypair.key -out keypair.crt 2>/dev/null
openssl req -x509 -nodes -subj "/CN=CRP/OU=AzureRT/O=Test" -days $days -newkey rsa:2048 \
    -keyout ca.key -out ca.crt 2>/dev/null
rm ca.key
# PFX like the fabric's: empty password, 3DES bags, SHA-1 MAC, one key + a CA cert
openssl pkcs12 -export -legacy -passout pass: -inkey tenant.key -in tenant.crt -certfile ca.crt \
    -certpbe PBE-SHA1-3DES -keypbe PBE-SHA1-3DES -macalg sha1 -name TenantEncryptionCert -out tenant.pfx
# the same with RC2-40 certificate bags (OpenSSL's -legacy default; not supported natively)
openssl pkcs12 -export -legacy -passout pass: -inkey tenant.key -in tenant.crt -out tenant-rc2.pfx
# PFX with OpenSSL 3 defaults (PBES2/AES-256, SHA-256 MAC)
openssl pkcs12 -export -passout pass: -inkey tenant.key -in tenant.crt -certfile ca.crt -out tenant-aes.pfx
# (a PFX with two private keys cannot be made with the CLI: vectors.py builds one)
envelope() {  # $1 = out, $2 = input, rest = cms options
    out=$1; in=$2; shift 2
    openssl cms -encrypt -binary -outform DER -in "$in" -out "$out" "$@"
}
envelope pfx-aes128-oaep-ski.der tenant.pfx -aes128 -recip transport.crt -keyid -keyopt rsa_padding_mode:oaep
envelope pfx-3des-pkcs1-ski.der tenant.pfx -des3 -recip transport.crt -keyid
envelope pfx-aes256-pkcs1-issuer.der tenant-aes.pfx -aes256 -recip transport.crt
envelope pfx-aes192-oaep-issuer.der tenant.pfx -aes192 -recip transport.crt -keyopt rsa_padding_mode:oaep
printf '{"commandToExecute": "echo s3cr3t-protected-value", "storageAccountKey": "a2V5LWtleS1rZXk="}' > settings.json
envelope protected-3des.der settings.json -des3 -recip tenant.crt
rm settings.json
# JIT passwords: UTF-16 with a little-endian BOM, a big-endian BOM, and none (native = little-endian)
printf 'J1t-P@ssw0rd!' | iconv -t UTF-16 > pw.txt            # glibc iconv writes a BOM
envelope jit-bom.der pw.txt -aes128 -recip transport.crt -keyid -keyopt rsa_padding_mode:oaep
printf 'J1t-P@ssw0rd!' | iconv -t UTF-16BE | (printf '\376\377'; cat) > pw.txt
envelope jit-bom-be.der pw.txt -des3 -recip transport.crt
printf 'J1t-P@ssw0rd!' | iconv -t UTF-16LE > pw.txt
envelope jit-nobom.der pw.txt -aes256 -recip transport.crt -keyid
rm pw.txt
# thumbprints, as openssl prints them, for the tests to compare against
for c in tenant keypair ca transport; do
    printf '%s %s\n' $c "$(openssl x509 -in $c.crt -noout -fingerprint -sha1 | cut -d= -f2 | tr -d :)"
done > thumbprints.txt
