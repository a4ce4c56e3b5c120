// The JDK's keytool, run for many commands in one JVM (see tests/keytool.py).
//
// Each request on stdin is a count and that many arguments, every field ended
// by a NUL byte. The arguments go to sun.security.tools.keytool.Main.main, the
// method the keytool launcher calls, with System.out and System.err caught for
// this command alone and System.in empty (a prompt reads end of file). The
// answer on stdout is a line "<exit status> <stdout bytes> <stderr bytes>"
// (and " end" if the JVM ends after it) followed by those bytes.
//
// keytool ends with System.exit(1) on an error. The security manager turns that
// exit into an Error (which keytool's own catch (Exception) lets through) and
// the command's output ends there, as it would have in a JVM of its own; the
// JVM goes on to the next request. Where the JDK refuses a security manager
// (18 to 23 unless allowed, 24 and later always), the exit is real: a shutdown
// hook sends the answer first, with status 1 (keytool's only exit status), and
// the caller starts a new JVM.

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.Charset;
import java.security.Permission;

@SuppressWarnings("removal")
public final class KeytoolBatch {

    /** System.exit(status) called by keytool. */
    static final class Exit extends Error {
        final int status;

        Exit(int status) {
            super("exit " + status, null, false, false);
            this.status = status;
        }
    }

    /** Allows everything but leaving the JVM. */
    static final class NoExit extends SecurityManager {
        @Override
        public void checkPermission(Permission perm) {
        }

        @Override
        public void checkPermission(Permission perm, Object context) {
        }

        @Override
        public void checkExit(int status) {
            out.stop();
            err.stop();
            throw new Exit(status);
        }
    }

    /** One command's output; what is written after its exit is dropped. */
    static final class Capture extends ByteArrayOutputStream {
        private boolean stopped;

        synchronized void start() {
            reset();
            stopped = false;
        }

        synchronized void stop() {
            stopped = true;
        }

        @Override
        public synchronized void write(int b) {
            if (!stopped) {
                super.write(b);
            }
        }

        @Override
        public synchronized void write(byte[] b, int off, int len) {
            if (!stopped) {
                super.write(b, off, len);
            }
        }
    }

    static final Capture out = new Capture();
    static final Capture err = new Capture();
    static PrintStream answers;
    static volatile boolean running;

    public static void main(String[] ignored) throws Exception {
        InputStream requests = System.in;
        answers = new PrintStream(System.out, false, "ISO-8859-1");
        Charset argCharset = Charset.forName(System.getProperty("sun.jnu.encoding"));
        System.setIn(new ByteArrayInputStream(new byte[0]));
        try {
            System.setSecurityManager(new NoExit());
        } catch (UnsupportedOperationException noSecurityManagers) {
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                if (running) {
                    answer(1, true);
                }
            }));
        }
        ByteArrayOutputStream field = new ByteArrayOutputStream();
        String count;
        while ((count = readField(requests, field, argCharset)) != null) {
            String[] args = new String[Integer.parseInt(count)];
            for (int i = 0; i < args.length; i++) {
                args[i] = readField(requests, field, argCharset);
            }
            running = true;
            int status = run(args);
            running = false;
            answer(status, false);
        }
    }

    private static int run(String[] args) {
        PrintStream realOut = System.out;
        PrintStream realErr = System.err;
        out.start();
        err.start();
        System.setOut(new PrintStream(out, true, Charset.defaultCharset()));
        System.setErr(new PrintStream(err, true, Charset.defaultCharset()));
        try {
            sun.security.tools.keytool.Main.main(args);
            return 0;
        } catch (Exit exit) {
            return exit.status;
        } catch (Throwable failure) {          // the launcher prints it and exits with 1
            System.err.print("Exception in thread \"main\" ");
            failure.printStackTrace();
            return 1;
        } finally {
            System.out.flush();
            System.err.flush();
            System.setOut(realOut);
            System.setErr(realErr);
        }
    }

    private static synchronized void answer(int status, boolean ending) {
        out.stop();
        err.stop();
        String end = ending ? " end" : "";
        answers.print(status + " " + out.size() + " " + err.size() + end + "\n");
        answers.write(out.toByteArray(), 0, out.size());
        answers.write(err.toByteArray(), 0, err.size());
        answers.flush();
    }

    /** The bytes up to the next NUL, decoded; null at the end of the input. */
    private static String readField(InputStream in, ByteArrayOutputStream field, Charset charset)
            throws java.io.IOException {
        field.reset();
        int b;
        while ((b = in.read()) != 0) {
            if (b < 0) {
                return null;
            }
            field.write(b);
        }
        return field.toString(charset);
    }
}
