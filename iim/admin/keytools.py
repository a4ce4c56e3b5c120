"""``python -m iim.admin keys ...``: the key tooling an iim deployment needs,
without Java's keytool or NSS's certutil.

The walk (docs/keys.md tells it step by step)::

    keys password-file  write a password file (mode 600) in iim's format
    keys link-secret    the shared secret of the multiplexor links (mode 600)
    keys build-ca       a CA: encrypted key + self-signed root certificate
    keys gen-req        a server key (encrypted) + certificate request
    keys sign-req       the CA signs a request -> server certificate
    keys make-keystore  key + signed reply + CA root -> PKCS#12 or JKS keystore
    keys make-nssdb     key + signed reply + CA root -> NSS database (multiplexor)

Private keys exist on disk only encrypted (PBES2, AES-256) and passwords are
read only from password files (``Internal (Software) Token:password``),
never from the command line, where ``ps`` and shell histories would show
them. Every output refuses to replace an existing file unless ``--force``.
Errors a user can cause are one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from iim.keys import ca as calib
from iim.keys import keyfiles
from iim.keys.errors import KeyMaterialError
from iim.keys.keyfiles import Output
from iim.keys.material import order_chain

from .guard import guarded

KEYS_DESCRIPTION = """\
Make the keys and certificates of an iim deployment without keytool or certutil:

  password-file  write a password file (mode 600) in iim's format
  link-secret    write the multiplexor links' shared secret (mode 600)
  build-ca       create a CA: encrypted key + self-signed root certificate
  gen-req        make a server key (encrypted) + certificate request
  sign-req       the CA signs a request -> server certificate
  make-keystore  key + signed reply + CA root -> PKCS#12 or JKS keystore (server)
  make-nssdb     key + signed reply + CA root -> NSS database (multiplexor)

Private keys are written only encrypted; passwords come from password files
("Internal (Software) Token:PASSWORD"), never from the command line. No output
file is replaced without --force. "keys ACTION --help" describes each action;
docs/keys.md walks through them.
"""


class KeysError(Exception):
    """One line for stderr."""


# ---------------------------------------------------------------------------
# The parsers


def add_keys_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``keys ACTION`` on ``python -m iim.admin``'s subparsers."""
    keys = subparsers.add_parser(
        "keys", help="make a CA, keys, requests, certificates, keystores, NSS databases",
        description=KEYS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    _password_file_parser(actions)
    _link_secret_parser(actions)
    _build_ca_parser(actions)
    _gen_req_parser(actions)
    _sign_req_parser(actions)
    _make_keystore_parser(actions)
    _make_nssdb_parser(actions)
    return keys


def _action(actions, name, run, summary, description, example):
    parser = actions.add_parser(
        name, help=summary, allow_abbrev=False,
        description=textwrap.dedent(description).strip(),
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=guarded("keys", (KeyMaterialError, KeysError))(run))
    return parser


def _force(parser, what="the output files") -> None:
    parser.add_argument("--force", action="store_true",
                        help=f"replace {what} when already there (default: refuse)")


def _key_options(parser) -> None:
    parser.add_argument("--keyalg", default="RSA", type=str.upper, choices=calib.KEY_ALGORITHMS,
                        help="key algorithm, as keytool's -keyalg: RSA or EC (default: RSA)")
    parser.add_argument("--keysize", type=int, metavar="BITS",
                        help="RSA: 2048, 3072 or 4096 (default 3072); "
                             "EC: 256, 384 or 521 for the NIST curves (default 256)")


def _password_file_parser(actions) -> None:
    parser = _action(
        actions, "password-file", _password_file, "write a password file (mode 600)",
        """
        Write FILE with one line "Internal (Software) Token:PASSWORD", the format
        iim reads for iim_server.keystorepasswordfile and iim_mux.keystorepasswordfile
        and that every other "keys" command takes with --password-file. The file is
        created with mode 600 (owner only) and put in place in one step, so no
        other user ever sees a partly written or readable file.

        The password is asked twice when stdin is a terminal, otherwise read as
        one line from stdin; with --generate a random one is made (32 characters,
        192 bits) and written only to the file. It is never taken from the
        command line and never printed. At least 6 characters (keytool's minimum).
        """,
        """
        python -m iim.admin keys password-file sslpassword.conf --generate
        python -m iim.admin keys password-file ca-password.conf      # asks twice
        """)
    parser.add_argument("file", metavar="FILE", help="the password file to write")
    parser.add_argument("--generate", action="store_true",
                        help="make a random password instead of asking for one")
    _force(parser, "FILE")


def _link_secret_parser(actions) -> None:
    parser = _action(
        actions, "link-secret", _link_secret, "write the mux links' shared secret (mode 600)",
        """
        Write FILE with a random secret (256 bits) in the password-file format, for
        iim_server.muxlink_secretfile and iim_mux.muxlink_secretfile: every link
        between a multiplexor and the server then proves it, both ways, bound to the
        link's TLS session (docs/muxlink.md). Without it the server accepts links
        from loopback only. The file is created with mode 600 and put in place in
        one step; the secret is never printed. Copy it (keeping mode 600) to every
        multiplexor host, and set both parameters, as printed.
        """,
        """
        python -m iim.admin keys link-secret muxlink-secret.conf
        """)
    parser.add_argument("file", metavar="FILE", help="the secret file to write")
    _force(parser, "FILE")


def _build_ca_parser(actions) -> None:
    parser = _action(
        actions, "build-ca", _build_ca, "create a CA: key and self-signed root",
        """
        Create a certificate authority for your servers: a new key, written
        encrypted to --key under the password of --password-file, and a
        self-signed root certificate written to --cert (PEM), with CA:TRUE and
        keyUsage keyCertSign + cRLSign. Keep the key and its password file
        private (offline if you can); give the certificate to every server,
        multiplexor and client that must trust certificates the CA signs.
        """,
        """
        python -m iim.admin keys password-file ca-password.conf --generate
        python -m iim.admin keys build-ca --key ca-key.pem --cert ca.pem \\
            --password-file ca-password.conf --subject "CN=Example IM CA,O=Example"
        """)
    parser.add_argument("--key", required=True, metavar="FILE",
                        help="where to write the CA's private key (encrypted PEM, mode 600)")
    parser.add_argument("--cert", required=True, metavar="FILE",
                        help="where to write the CA's root certificate (PEM)")
    parser.add_argument("--password-file", required=True, metavar="FILE",
                        help="the password that encrypts the key (see password-file)")
    parser.add_argument("--subject", default="CN=iim CA", metavar="DN",
                        help='the CA\'s name, RFC 4514 (default: "CN=iim CA")')
    parser.add_argument("--days", type=int, default=3650,
                        help="validity in days (default: 3650, ten years)")
    _key_options(parser)
    _force(parser)


def _gen_req_parser(actions) -> None:
    parser = _action(
        actions, "gen-req", _gen_req, "make a server key and a certificate request",
        """
        Generate a key for a server (or multiplexor) of DOMAIN, write it
        encrypted to --key under the password of --password-file, and write a
        certificate request (PKCS#10, PEM) to --out. The request asks for the
        subjectAltName dNSName DOMAIN, plus every --name (another domain, a
        "*.domain" wildcard or an IP address). Peers check these names, not the
        subject. Send the request to your CA, or sign it with sign-req.
        """,
        """
        python -m iim.admin keys gen-req im.example.com --key server-key.pem \\
            --out server.csr --password-file sslpassword.conf --name chat.example.com
        """)
    parser.add_argument("domain", metavar="DOMAIN",
                        help="the server's domain (iim_server.domainname)")
    parser.add_argument("--key", required=True, metavar="FILE",
                        help="where to write the private key (encrypted PEM, mode 600)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the certificate request (PEM)")
    parser.add_argument("--password-file", required=True, metavar="FILE",
                        help="the password that encrypts the key")
    parser.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="another DNS name, wildcard or IP address for the certificate "
                             "(repeat for more)")
    parser.add_argument("--subject", metavar="DN",
                        help='the request\'s subject, RFC 4514 (default: "CN=DOMAIN")')
    _key_options(parser)
    _force(parser)


def _sign_req_parser(actions) -> None:
    parser = _action(
        actions, "sign-req", _sign_req, "sign a certificate request with the CA",
        """
        Sign the certificate request CSR (made by gen-req, keytool -certreq or
        certutil -R; PEM or DER) with the CA and write the server certificate
        to --out (PEM). The request's signature is checked first, and so is
        that --ca-key belongs to --ca-cert. The certificate gets the request's
        subject and names (its subjectAltName, or its common name when it has
        none) plus every --name, CA:FALSE, extendedKeyUsage serverAuth and
        clientAuth (a server is a TLS client when it opens a server-to-server
        stream), a random serial, and --days of validity, never past the CA's
        own end date. Nothing else the request asks for is copied.
        """,
        """
        python -m iim.admin keys sign-req server.csr --ca-cert ca.pem \\
            --ca-key ca-key.pem --ca-password-file ca-password.conf --out server.pem
        """)
    parser.add_argument("csr", metavar="CSR", help="the certificate request to sign")
    parser.add_argument("--ca-cert", required=True, metavar="FILE",
                        help="the CA's certificate (from build-ca)")
    parser.add_argument("--ca-key", required=True, metavar="FILE",
                        help="the CA's encrypted private key (from build-ca)")
    parser.add_argument("--ca-password-file", required=True, metavar="FILE",
                        help="the password of the CA's key")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the signed certificate (PEM)")
    parser.add_argument("--days", type=int, default=825,
                        help="validity in days (default: 825)")
    parser.add_argument("--name", action="append", default=[], metavar="NAME",
                        help="a name to add to those the request asks for (repeat for more)")
    parser.add_argument("--chain", action="store_true",
                        help="write the CA certificate after the server's (a chain reply)")
    _force(parser, "--out")


def _store_inputs(parser) -> None:
    parser.add_argument("--key", required=True, metavar="FILE",
                        help="the server's encrypted private key (from gen-req)")
    parser.add_argument("--password-file", required=True, metavar="FILE",
                        help="the password of --key")
    parser.add_argument("--cert", required=True, metavar="FILE",
                        help="the signed reply: the server certificate, or a chain "
                             "(PEM, leaf and intermediates in any order)")
    parser.add_argument("--ca-cert", required=True, metavar="FILE",
                        help="the CA root certificate(s) to trust (PEM); the reply must "
                             "chain to one of them")


def _make_keystore_parser(actions) -> None:
    parser = _action(
        actions, "make-keystore", _make_keystore,
        "put key, signed reply and CA root into a PKCS#12 or JKS keystore",
        """
        Write the server's keystore (iim_server.sslkeystore): a private-key
        entry --alias holding the key and its full chain (the reply's
        certificates up to the CA root), and the CA root as a trusted-certificate
        entry --ca-alias, which iim uses to verify coservers. keytool -list
        shows them as "PrivateKeyEntry" and "trustedCertEntry".

        PKCS#12 (the default, keytool's default too) protects the key with
        PBES2/AES-256 and has one password, --store-password-file. JKS is
        Java's older format (weaker key protection); only it allows the key
        entry a password of its own (--entry-password-file, which iim then
        reads from iim_server.keypasswordfile). The store password defaults to
        --password-file, so one sslpassword.conf can serve both.
        """,
        """
        python -m iim.admin keys make-keystore --key server-key.pem \\
            --password-file sslpassword.conf --cert server.pem --ca-cert ca.pem \\
            --out server-keystore.p12
        """)
    _store_inputs(parser)
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the keystore to write (mode 600)")
    parser.add_argument("--storetype", default="PKCS12", type=str.upper,
                        choices=("PKCS12", "JKS"), help="PKCS12 (default) or JKS")
    parser.add_argument("--alias", default="server",
                        help='alias of the private-key entry (default: "server")')
    parser.add_argument("--ca-alias", default="ca",
                        help='alias of the trusted CA entry (default: "ca"; with several '
                             "CA certificates, -2, -3... are appended)")
    parser.add_argument("--store-password-file", metavar="FILE",
                        help="the keystore password (default: --password-file)")
    parser.add_argument("--entry-password-file", metavar="FILE",
                        help="JKS only: a password for the key entry (default: the store "
                             "password)")
    _force(parser, "--out")


def _make_nssdb_parser(actions) -> None:
    parser = _action(
        actions, "make-nssdb", _make_nssdb,
        "put key, signed reply and CA root into a new NSS database (multiplexor)",
        """
        Create the multiplexor's NSS database (iim_mux.secconfigdir) in DIR
        through libnss3 itself: the key and its certificate under --nickname
        (iim_mux.certnickname, listed by certutil -L with trust "u,u,u"), any
        intermediate CA certificates, and the CA root as a trusted CA ("C,,")
        under --ca-nickname. The database password (iim_mux.keystorepasswordfile)
        defaults to --password-file. DIR is created (mode 700) if needed; an
        existing database with the same prefixes there is never touched. The
        result is read back with iim's own reader before success is reported.
        """,
        """
        python -m iim.admin keys make-nssdb mux-nss --key server-key.pem \\
            --password-file sslpassword.conf --cert server.pem --ca-cert ca.pem
        certutil -L -d sql:mux-nss        # Multiplexor-Cert u,u,u / iim CA C,,
        """)
    parser.add_argument("dir", metavar="DIR", help="the database folder")
    _store_inputs(parser)
    parser.add_argument("--dbtype", default="sql", choices=("sql", "dbm"),
                        help="sql: cert9.db/key4.db (default); dbm: the legacy "
                             "cert8.db/key3.db")
    parser.add_argument("--nickname", default="Multiplexor-Cert",
                        help='the certificate\'s nickname, case-sensitive '
                             '(default: "Multiplexor-Cert")')
    parser.add_argument("--ca-nickname", metavar="NAME",
                        help="the CA root's nickname (default: its common name)")
    parser.add_argument("-P", "--prefix", metavar="PREFIX",
                        help="sets both --certdbprefix and --keydbprefix, as certutil -P")
    parser.add_argument("--certdbprefix", default=None, metavar="PREFIX",
                        help='prefix of the certificate database file (iim_mux.certdbprefix, '
                             'default "")')
    parser.add_argument("--keydbprefix", default=None, metavar="PREFIX",
                        help='prefix of the key database file (iim_mux.keydbprefix, '
                             'default "")')
    parser.add_argument("--secmodfile", default="secmod.db", metavar="NAME",
                        help="the module database of a dbm database (iim_mux.secmodfile, "
                             "default secmod.db)")
    parser.add_argument("--db-password-file", metavar="FILE",
                        help="the database password (default: --password-file)")


# ---------------------------------------------------------------------------
# The commands: each runs guarded (iim/admin/guard.py): a user's error is one line


def _password_file(args) -> None:
    keyfiles.check_new([args.file], force=args.force)
    password = secrets.token_urlsafe(24) if args.generate else _ask_password()
    keyfiles.write_files([keyfiles.password_file_output(args.file, password)],
                         force=args.force)
    how = "a generated password" if args.generate else "the password given"
    print(f"wrote {args.file} (mode 600) with {how}")


def _link_secret(args) -> None:
    keyfiles.write_files([keyfiles.password_file_output(args.file, secrets.token_urlsafe(32))],
                         force=args.force)
    print(f"wrote {args.file} (mode 600) with a generated secret; in iim.conf set\n"
          f'  iim_server.muxlink_secretfile = "{args.file}"\n'
          f'  iim_mux.muxlink_secretfile = "{args.file}"')


def _build_ca(args) -> None:
    keyfiles.check_new([args.key, args.cert], force=args.force)
    calib.check_days(args.days)
    pwfile = _password(args.password_file, "--password-file")
    subject = calib.parse_subject(args.subject)
    key = calib.new_key(args.keyalg, args.keysize)
    cert = calib.build_ca(key, subject, args.days)
    keyfiles.write_files([keyfiles.private_key_output(args.key, key, pwfile.password),
                          Output(args.cert, _pem(cert))], force=args.force)
    print(f"CA {cert.subject.rfc4514_string()}: certificate {args.cert}, key {args.key} "
          f"(encrypted), valid until {cert.not_valid_after_utc:%Y-%m-%d}, "
          f"SHA-256 fingerprint {_fingerprint(cert)}")


def _gen_req(args) -> None:
    keyfiles.check_new([args.key, args.out], force=args.force)
    pwfile = _password(args.password_file, "--password-file")
    subject = calib.parse_subject(args.subject) if args.subject else None
    calib.general_names([args.domain, *args.name])        # bad names fail before keygen
    key = calib.new_key(args.keyalg, args.keysize)
    csr = calib.make_request(key, args.domain, args.name, subject)
    keyfiles.write_files([keyfiles.private_key_output(args.key, key, pwfile.password),
                          Output(args.out, csr.public_bytes(serialization.Encoding.PEM))],
                         force=args.force)
    names = ", ".join(_request_names(csr))
    print(f"request {args.out} for {names}; key {args.key} (encrypted)")


def _sign_req(args) -> None:
    keyfiles.check_new([args.out], force=args.force)
    calib.check_days(args.days)
    csr = keyfiles.read_request(args.csr, "CSR")
    ca_certs = keyfiles.read_certificates(args.ca_cert, "--ca-cert")
    pwfile = _password(args.ca_password_file, "--ca-password-file")
    ca_key = keyfiles.read_private_key(args.ca_key, pwfile, "--ca-key")
    ca_cert = _ca_for_key(ca_key, ca_certs, args)
    try:                                  # the CA is checked: what fails is the request
        signed = calib.sign_request(csr, ca_key, ca_cert, args.days, args.name)
    except KeyMaterialError as err:
        raise KeysError(f"CSR {args.csr}: {err}") from None
    data = _pem(signed.certificate) + (_pem(ca_cert) if args.chain else b"")
    keyfiles.write_files([Output(args.out, data)], force=args.force)
    cert = signed.certificate
    print(f"signed {args.out}: {cert.subject.rfc4514_string()}, names "
          f"{', '.join(signed.names)}, serial {cert.serial_number:x}, valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d}")
    if signed.capped:
        print(f"note: the validity was shortened to end with the CA's "
              f"({ca_cert.not_valid_after_utc:%Y-%m-%d})")


def _make_keystore(args) -> None:
    from iim.keys import jkswrite, pkcs12write
    keyfiles.check_new([args.out], force=args.force)
    if args.entry_password_file and args.storetype != "JKS":
        raise KeysError("--entry-password-file: a PKCS#12 keystore has one password (keytool "
                        "refuses another key password); use --storetype JKS or drop it")
    key, chain, anchors = _signed_material(args)
    ca_aliases = _ca_aliases(args.ca_alias, len(anchors))
    try:
        pkcs12write.check_aliases(args.alias, ca_aliases)
    except ValueError as err:
        raise KeysError(str(err)) from None
    store_pw = _password(args.store_password_file or args.password_file,
                         "--store-password-file" if args.store_password_file
                         else "--password-file")
    named = list(zip(anchors, ca_aliases))
    if args.storetype == "JKS":
        entry_pw = (_password(args.entry_password_file, "--entry-password-file").password
                    if args.entry_password_file else None)
        data = jkswrite.build(key, chain, named, alias=args.alias, password=store_pw.password,
                              key_password=entry_pw)
    else:
        data = pkcs12write.build(key, chain, named, alias=args.alias,
                                 password=store_pw.password)
    keyfiles.write_files([Output(args.out, data, keyfiles.PRIVATE)], force=args.force)
    shown = str.lower if args.storetype == "JKS" else str      # JKS aliases are lower case
    trusted = ", ".join(f'"{shown(a)}"' for a in ca_aliases)
    print(f'wrote {args.storetype} keystore {args.out}: private-key entry "{shown(args.alias)}" '
          f"(chain of {len(chain)}), trusted-certificate entry {trusted}")


def _make_nssdb(args) -> None:
    from iim.keys import nsswrite
    key, chain, anchors = _signed_material(args)
    db_pw = _password(args.db_password_file or args.password_file,
                      "--db-password-file" if args.db_password_file else "--password-file")
    prefix = args.prefix or ""
    target = nsswrite.Target(
        Path(args.dir).absolute(), args.dbtype,
        args.certdbprefix if args.certdbprefix is not None else prefix,
        args.keydbprefix if args.keydbprefix is not None else prefix, args.secmodfile)
    ca_nicknames = _ca_nicknames(args.ca_nickname, anchors)
    material = nsswrite.create(target, key=key, chain=chain, anchors=list(zip(anchors,
                                                                              ca_nicknames)),
                               nickname=args.nickname, password=db_pw.password)
    cas = ", ".join(f'"{n}" (C,,)' for n in ca_nicknames)
    print(f'wrote NSS database {target.spec} (certdbprefix "{target.certdbprefix}", '
          f'keydbprefix "{target.keydbprefix}"): "{material.alias}" (u,u,u) with its key, '
          f"trusted {cas}")


# ---------------------------------------------------------------------------
# Inputs


def _ask_password() -> str:
    """Twice at a terminal; else one line of stdin. Never echoed."""
    try:
        if sys.stdin.isatty():
            first = getpass.getpass("Password: ")
            if getpass.getpass("Same password again: ") != first:
                raise KeysError("the two passwords differ; nothing written")
            return first
        line = sys.stdin.readline()
    except EOFError:
        raise KeysError("no password given") from None
    password = line[:-1] if line.endswith("\n") else line
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise KeysError("no password on stdin (give one line, or use --generate)")
    return password


def _password(path, option: str):
    pwfile = keyfiles.read_password(path, option)
    for warning in pwfile.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return pwfile


def _ca_for_key(ca_key, ca_certs, args) -> x509.Certificate:
    for cert in ca_certs:
        if calib.same_key(ca_key, cert):
            try:
                calib.check_ca(ca_key, cert)
            except KeyMaterialError as err:
                raise KeysError(f"--ca-cert {args.ca_cert}: {err}") from None
            return cert
    raise KeysError(f"--ca-key {args.ca_key} does not belong to --ca-cert {args.ca_cert} "
                    "(their public keys differ)")


def _signed_material(args):
    """(key, chain leaf..root, CA roots) from --key, --cert and --ca-cert, checked:
    the reply holds the key's certificate and chains to a CA given."""
    pwfile = _password(args.password_file, "--password-file")
    key = keyfiles.read_private_key(args.key, pwfile, "--key")
    reply = keyfiles.read_certificates(args.cert, "--cert")
    roots = keyfiles.read_certificates(args.ca_cert, "--ca-cert")
    leaf = next((c for c in reply if calib.same_key(key, c)), None)
    if leaf is None:
        raise KeysError(f"--cert {args.cert}: no certificate in it belongs to the key in "
                        f"--key {args.key} (the public keys differ)")
    chain = order_chain(leaf, [*reply, *roots])
    anchors = [r for r in roots if r == chain[-1]]
    if not anchors:
        end = (f"its issuer is {leaf.issuer.rfc4514_string()}" if len(chain) == 1 else
               f"its chain ends at {_describe(chain[-1])}, issued by "
               f"{chain[-1].issuer.rfc4514_string()}")
        raise KeysError(f"--cert {args.cert}: {_describe(leaf)} was not signed by the CA in "
                        f"--ca-cert {args.ca_cert} ({end})")
    _check_dates(chain, args.cert)
    others = [r for r in roots if r not in anchors]
    return key, chain, anchors + others


def _check_dates(chain, path) -> None:
    now = datetime.now(timezone.utc)
    for cert in chain:
        if now > cert.not_valid_after_utc:
            raise KeysError(f"--cert {path}: {_describe(cert)} expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}")


def _ca_aliases(base: str, count: int) -> list[str]:
    return [base] + [f"{base}-{n}" for n in range(2, count + 1)]


def _ca_nicknames(given: str | None, anchors) -> list[str]:
    names = []
    for number, cert in enumerate(anchors, 1):
        if given:
            names.append(given if number == 1 else f"{given} #{number}")
            continue
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(common[0].value) if common else cert.subject.rfc4514_string()
        names.append(name if name not in names else f"{name} #{number}")
    return names


# ---------------------------------------------------------------------------
# Small helpers


def _request_names(csr) -> list[str]:
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


def _describe(cert) -> str:
    return cert.subject.rfc4514_string() or "the certificate"


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _fingerprint(cert) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()
