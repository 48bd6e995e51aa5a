//! The `s3s::S3` implementation: each operation the front supports, timed
//! and counted in `redstuff_s3_*`; every other one answers NotImplemented
//! (s3s's default), never a wrong success.

use std::future::Future;
use std::time::Instant;

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};

use super::front::Front;

impl Front {
    async fn observed<T>(
        &self,
        op: &'static str,
        work: impl Future<Output = S3Result<T>>,
    ) -> S3Result<S3Response<T>> {
        let start = Instant::now();
        let result = work.await;
        let code = match &result {
            Ok(_) => 200,
            Err(e) => e
                .status_code()
                .or_else(|| e.code().status_code())
                .map_or(500, |s| s.as_u16()),
        };
        self.metrics
            .requests
            .with_label_values(&[op, &code.to_string()])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &result {
            if code >= 500 {
                tracing::warn!(op, code, "S3 request failed: {}", e.message().unwrap_or(""));
            }
        }
        result.map(S3Response::new)
    }
}

macro_rules! operations {
    ($($method:ident($input:ident) -> $output:ident as $name:literal;)*) => {
        #[async_trait::async_trait]
        impl S3 for Front {
            $(
                async fn $method(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.observed($name, Front::$method(self, req)).await
                }
            )*
        }
    };
}

operations! {
    list_buckets(ListBucketsInput) -> ListBucketsOutput as "ListBuckets";
    create_bucket(CreateBucketInput) -> CreateBucketOutput as "CreateBucket";
    head_bucket(HeadBucketInput) -> HeadBucketOutput as "HeadBucket";
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput as "DeleteBucket";
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput as "GetBucketLocation";
    get_bucket_versioning(GetBucketVersioningInput) -> GetBucketVersioningOutput as "GetBucketVersioning";
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output as "ListObjectsV2";
    list_objects(ListObjectsInput) -> ListObjectsOutput as "ListObjects";
    list_object_versions(ListObjectVersionsInput) -> ListObjectVersionsOutput as "ListObjectVersions";
    put_object(PutObjectInput) -> PutObjectOutput as "PutObject";
    get_object(GetObjectInput) -> GetObjectOutput as "GetObject";
    head_object(HeadObjectInput) -> HeadObjectOutput as "HeadObject";
    delete_object(DeleteObjectInput) -> DeleteObjectOutput as "DeleteObject";
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput as "DeleteObjects";
    copy_object(CopyObjectInput) -> CopyObjectOutput as "CopyObject";
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput as "CreateMultipartUpload";
    upload_part(UploadPartInput) -> UploadPartOutput as "UploadPart";
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput as "UploadPartCopy";
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput as "CompleteMultipartUpload";
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput as "AbortMultipartUpload";
    list_parts(ListPartsInput) -> ListPartsOutput as "ListParts";
    list_multipart_uploads(ListMultipartUploadsInput) -> ListMultipartUploadsOutput as "ListMultipartUploads";
    get_object_tagging(GetObjectTaggingInput) -> GetObjectTaggingOutput as "GetObjectTagging";
    put_object_tagging(PutObjectTaggingInput) -> PutObjectTaggingOutput as "PutObjectTagging";
    delete_object_tagging(DeleteObjectTaggingInput) -> DeleteObjectTaggingOutput as "DeleteObjectTagging";
    get_object_acl(GetObjectAclInput) -> GetObjectAclOutput as "GetObjectAcl";
    get_bucket_acl(GetBucketAclInput) -> GetBucketAclOutput as "GetBucketAcl";
}
