/** Where the stack's services are; read from the environment or the local stack's state file. */
export interface S3Config {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
}

export interface KybernateConfig {
  temporalAddress: string;
  namespace: string;
  uiUrl: string | null;
  s3: S3Config;
}
