/** The agent's version, as nodes record it and `ciliate status` shows it. */
export const VERSION = '0.1.0';
