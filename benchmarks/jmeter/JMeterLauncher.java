/*
 * Starts Debian's JMeter 2.13 with XStream's type permissions opened, for
 * benchmarks/run_jmeter.py, which compiles and runs it with Java's
 * source launcher on JMeter's class path:
 *
 *     java -Djmeter.home=/usr/share/jmeter -cp JARS JMeterLauncher.java -n -t PLAN ...
 *
 * Why: Debian bookworm pairs JMeter 2.13 with XStream 1.4.20, which
 * deserializes only the types it is told to allow. JMeter 2.13 predates
 * that and allows none, so loading any test plan fails ("Error in
 * NonGUIDriver ... ForbiddenClassException") and `jmeter -n` still exits 0
 * having run nothing. This class loads JMeter's properties (SaveService
 * reads them when it is first used), lets each XStream instance of
 * SaveService read any type, then hands the command line to JMeter.
 * A test plan is a file its user chose to run: as trusted as JMeter itself.
 */

import com.thoughtworks.xstream.XStream;
import com.thoughtworks.xstream.security.AnyTypePermission;
import java.io.File;
import java.lang.reflect.Field;
import java.lang.reflect.Modifier;
import org.apache.jmeter.JMeter;
import org.apache.jmeter.save.SaveService;
import org.apache.jmeter.util.JMeterUtils;

public final class JMeterLauncher {

    /** Exit status for a JMeter this class cannot work with (run_jmeter.py's "missing"). */
    private static final int UNUSABLE = 2;

    private JMeterLauncher() {}

    public static void main(String[] args) throws Exception {
        String home = System.getProperty("jmeter.home");
        if (home == null || !new File(home, "bin/jmeter.properties").isFile()) {
            fail("no JMeter at -Djmeter.home=" + home);
        }
        JMeterUtils.setJMeterHome(home);
        JMeterUtils.loadJMeterProperties(new File(home, "bin/jmeter.properties").getPath());
        if (openXStreams() == 0) {
            fail("JMeter's SaveService holds no XStream: this launcher is for JMeter 2.13");
        }
        new JMeter().start(args);
    }

    /** Let every static XStream of SaveService read any type; how many there were. */
    private static int openXStreams() throws IllegalAccessException {
        int opened = 0;
        for (Field field : SaveService.class.getDeclaredFields()) {
            if (Modifier.isStatic(field.getModifiers())
                    && XStream.class.isAssignableFrom(field.getType())) {
                field.setAccessible(true);
                ((XStream) field.get(null)).addPermission(AnyTypePermission.ANY);
                opened++;
            }
        }
        return opened;
    }

    private static void fail(String why) {
        System.err.println("run_jmeter: " + why);
        System.exit(UNUSABLE);
    }
}
