package dev.riverbed.registry;

import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import java.util.List;
import javax.enterprise.inject.Produces;
import javax.inject.Singleton;

/** Stands in for the bean the config-index extension generates at build time (its deployment
 * module is not on Maven Central): no dynamically configurable properties. */
public class DynamicConfigProducer {
    @Produces
    @Singleton
    DynamicConfigPropertyList dynamicConfigProperties() {
        return new DynamicConfigPropertyList(List.of());
    }
}
